"""Metrics to `WORKDIR/metrics.jsonl` and TensorBoard event files (process 0 only)."""

import json
import os

import numpy as np


class MetricWriter:
  """Appends one JSON line per logged step and mirrors scalars and images to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def scalars(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({'step': step, **{k: float(v) for k, v in metrics.items()}}) + '\n')
    self._jsonl.flush()
    for key, value in metrics.items():
      self._tb.add_scalar(key, float(value), step)
    self._tb.flush()

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    """`image`: uint8 [H, W, C]."""
    if self.enabled:
      self._tb.add_image(name, image, step, dataformats='HWC')
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
