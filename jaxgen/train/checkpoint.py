"""Orbax checkpoints of a run: the train state and the config it was made with.

Layout: `WORKDIR/checkpoints/<step>/{state,config}`. Saves are asynchronous
(training goes on while the previous save is written); Orbax writes each step
to a temporary directory and renames it when complete, so an interrupted save
never replaces a good checkpoint.
"""

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxgen import config as config_lib
from jaxgen.errors import JaxgenError

# Config sections that define what a checkpoint contains: a run may change its
# length or logging on resume, but not these.
MODEL_SECTIONS = ('family', 'model', 'diffusion', 'data')


def checkpoint_dir(workdir: str, subdir: str = 'checkpoints') -> str:
  return os.path.join(os.path.abspath(workdir), subdir)


def open_manager(workdir: str, *, max_to_keep: int = 3, read_only: bool = False,
                 subdir: str = 'checkpoints') -> ocp.CheckpointManager:
  """A CheckpointManager for `WORKDIR/subdir`; with read_only it creates nothing.

  `subdir` is 'checkpoints' for the latest steps and 'best' for the best
  checkpoint by an evaluation metric (`train.keep_best`).
  """
  if read_only:  # the values Orbax would force (and warn about) for a read-only manager
    options = ocp.CheckpointManagerOptions(max_to_keep=None, save_interval_steps=0, create=False,
                                           read_only=True, enable_async_checkpointing=False)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir, subdir), options=options)


def latest_step(workdir: str) -> int | None:
  """The newest complete checkpoint step in `workdir`, or None; creates nothing."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return None
  with open_manager(workdir, read_only=True) as mngr:
    return mngr.latest_step()


def save(mngr: ocp.CheckpointManager, state: Any, config: ml_collections.ConfigDict) -> None:
  """Starts an asynchronous save of `state` (and the config) at `state.step`."""
  step = int(jax.device_get(state.step))
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(config.to_dict())), force=True)


def restore_config(mngr: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
  """The config saved with checkpoint `step`."""
  restored = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return config_lib.from_json(config_lib.to_json(ml_collections.ConfigDict(restored['config'])))


def restore_state(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
  """Restores the state of checkpoint `step` onto the shapes and shardings of `abstract_state`."""
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored['state']


def check_same_model(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                     workdir: str) -> None:
  """Raises JaxgenError when `workdir` holds a run of a different model."""
  def canonical(value):
    value = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    return json.dumps(value, sort_keys=True, default=list)  # tuples and lists compare equal

  for name in MODEL_SECTIONS:
    if canonical(saved.get(name)) != canonical(config.get(name)):
      raise JaxgenError(f'{workdir} holds a checkpoint of another model (config.{name} differs); '
                        f'use a new --workdir or the config it was trained with.')
