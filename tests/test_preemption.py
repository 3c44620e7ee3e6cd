"""Preemption: SIGTERM saves and exits; SIGKILL loses only the steps since the last complete
checkpoint; the resumed run ends bit for bit where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import pytest
import numpy as np

from jaxgen import config as config_lib
from jaxgen.train import checkpoint, trainer
from conftest import REPO

SMOKE = str(REPO / 'experiments' / 'ddpm_mnist.py') + ':smoke'
NUM_STEPS = 40
OVERRIDES = [f'train.num_steps={NUM_STEPS}', 'train.log_every=1', 'train.checkpoint_every=4',
             'train.sample_every=0']


def logged_steps(workdir) -> list[int]:
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return []
  return [json.loads(line)['step'] for line in path.read_text().splitlines() if line.endswith('}')]


def start(workdir) -> subprocess.Popen:
  args = [sys.executable, '-m', 'jaxgen.cli', 'train', '--config', SMOKE, '--workdir', str(workdir)]
  return subprocess.Popen(args + [f'--config.{o}' for o in OVERRIDES], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=dict(os.environ))


def wait_for(proc, done) -> None:
  deadline = time.time() + 240
  while not done():
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, 'training did not get there'
    time.sleep(0.02)


@pytest.mark.slow  # CI time: three training processes, ~200 s; test_train covers bit-for-bit resume
def test_sigterm_then_sigkill_then_resume_is_bit_for_bit(mnist_env, tmp_path):
  workdir = tmp_path / 'run'

  # SIGTERM: the step reached is saved and the process exits cleanly.
  proc = start(workdir)
  wait_for(proc, lambda: logged_steps(workdir) and logged_steps(workdir)[-1] >= 3)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert 'Received a stop request' in out
  saved = checkpoint.latest_step(str(workdir))
  assert 3 <= saved < NUM_STEPS and saved >= logged_steps(workdir)[-1]

  # SIGKILL (no chance to save) once the resumed run has completed its next periodic
  # checkpoint (Orbax renames the step's directory into place when it is complete).
  proc = start(workdir)
  next_checkpoint = (saved // 4 + 1) * 4
  wait_for(proc, lambda: (workdir / 'checkpoints' / str(next_checkpoint)).is_dir())
  proc.kill()
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert f'Resuming from step {saved}' in out
  killed_at = logged_steps(workdir)[-1]
  assert killed_at < NUM_STEPS, 'the run finished before it could be killed'

  # The same command resumes from the last complete checkpoint and finishes.
  proc = start(workdir)
  out, _ = proc.communicate(timeout=240)
  assert proc.returncode == 0, out
  resumed_from = int(out.split('Resuming from step ')[1].split()[0])
  assert next_checkpoint <= resumed_from <= killed_at

  uninterrupted = trainer.train_and_evaluate(config_lib.load_config(SMOKE, OVERRIDES),
                                             str(tmp_path / 'straight'))
  s = trainer.setup(config_lib.load_config(SMOKE, OVERRIDES))
  final = checkpoint.restore_latest(str(workdir), lambda _: s.abstract_state)
  assert final.step == NUM_STEPS and not final.damaged
  assert final.examples_seen == NUM_STEPS * 8  # the input position, saved with the state
  for field in ('params', 'ema_params', 'opt_state', 'rng'):
    for a, b in zip(jax.tree.leaves(getattr(final.state, field)),
                    jax.tree.leaves(getattr(uninterrupted, field))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=field)
