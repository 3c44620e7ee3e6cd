"""Orbax checkpoints of a run: the train state, the config and the input position.

Layout: `WORKDIR/checkpoints/<step>/{state,config,data}`; `data` holds the
number of training examples consumed (the input pipeline's position). Saves
are asynchronous (training goes on while the previous save is written); Orbax
writes each step to a temporary directory and renames it when complete, so an
interrupted save never replaces a good checkpoint, and a run killed mid-save
resumes from the last complete one.

A checkpoint that is complete but cannot be read (a truncated or corrupted
file) is reported in one sentence and skipped for the newest earlier one that
reads (`restore_latest`); the trainer then moves it to
`WORKDIR/damaged_checkpoints/<step>` (`set_aside`), so nothing is deleted.
"""

import dataclasses
import json
import os
import sys
from typing import Any, Callable

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxgen import config as config_lib
from jaxgen.errors import JaxgenError

# Config sections that define what a checkpoint contains: a run may change its
# length or logging on resume, but not these.
MODEL_SECTIONS = ('family', 'model', 'diffusion', 'data')
# Keys of those sections that choose how the same function is computed (kernels,
# layouts, recomputation; same parameter tree): a run may change them on resume,
# and a checkpoint written before they existed still resumes.
EXECUTION_KEYS = {'model': ('attention', 'split_skip', 'remat')}


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
  # Replica-parallel writing spreads a replicated array's bytes over the processes
  # that hold it; within one process it only slices every array into per-device
  # pieces first (seconds of small compiles per run with 8 devices), so it is on
  # only with several processes.
  arrays = ocp.type_handlers.ArrayHandler(use_replica_parallel=jax.process_count() > 1)
  registry = ocp.type_handlers.create_type_handler_registry((jax.Array, arrays))
  handlers = {'state': ocp.PyTreeCheckpointHandler(type_handler_registry=registry),
              'config': ocp.JsonCheckpointHandler(), 'data': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(checkpoint_dir(workdir, subdir), options=options,
                               item_handlers=handlers)


def latest_step(workdir: str) -> int | None:
  """The newest complete checkpoint step in `workdir`, or None; creates nothing."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return None
  with open_manager(workdir, read_only=True) as mngr:
    return mngr.latest_step()


def save(mngr: ocp.CheckpointManager, state: Any, config: ml_collections.ConfigDict,
         examples_seen: int) -> None:
  """Starts an asynchronous save of `state`, the config and the input position at `state.step`."""
  step = int(jax.device_get(state.step))
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeSave(state),
      config=ocp.args.JsonSave(config.to_dict()),
      data=ocp.args.JsonSave({'examples_seen': int(examples_seen)})), force=True)


def restore_config(mngr: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
  """The config saved with checkpoint `step`."""
  restored = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return config_lib.from_json(config_lib.to_json(ml_collections.ConfigDict(restored['config'])))


@dataclasses.dataclass
class Restored:
  """A checkpoint read back: its step, config, train state and input position."""
  step: int
  config: ml_collections.ConfigDict
  state: Any
  examples_seen: int
  damaged: list[int]  # newer steps that could not be read and were skipped


def restore_latest(workdir: str, abstract_state: Callable[[ml_collections.ConfigDict], Any],
                   step: int | None = None, subdir: str = 'checkpoints') -> Restored | None:
  """The newest checkpoint of `workdir` that reads completely (or exactly `step`); None if none exist.

  `abstract_state(saved_config)` gives the shapes and shardings to restore onto
  (any mesh: a checkpoint restores onto another device count or sharding); a
  JaxgenError it raises (another model) propagates. A checkpoint that fails to
  read is reported on stderr and skipped for the previous one; if none reads,
  JaxgenError. Reads only.
  """
  if not os.path.isdir(checkpoint_dir(workdir, subdir)):
    return None
  damaged = []
  _quiet_abandoned_reads()  # before any read: the noise starts the moment one read fails
  with open_manager(workdir, read_only=True, subdir=subdir) as mngr:
    steps = sorted(mngr.all_steps(), reverse=True)
    if step is not None:
      if step not in steps:
        raise JaxgenError(f'no checkpoint at step {step} in {workdir}; it has {sorted(steps)}.')
      steps = [step]
    for s in steps:
      try:
        config = restore_config(mngr, s)
      except Exception as e:  # pylint: disable=broad-except
        _report_damaged(mngr, s, e)
        damaged.append(s)
        continue
      abstract = abstract_state(config)  # JaxgenError here is about the model, not the files
      try:
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        restored = mngr.restore(s, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args),
            data=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        _report_damaged(mngr, s, e)
        damaged.append(s)
        continue
      return Restored(s, config, restored['state'], int(restored['data']['examples_seen']), damaged)
  if not steps:
    return None
  raise JaxgenError(f'no checkpoint in {checkpoint_dir(workdir, subdir)} can be read (steps '
                    f'{", ".join(map(str, damaged))} are damaged); restore them from a backup or '
                    f'use a new --workdir.')


def _report_damaged(mngr: ocp.CheckpointManager, step: int, error: Exception) -> None:
  """One sentence on stderr (process 0) naming the checkpoint and the innermost error."""
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
  if jax.process_index() == 0:
    print(f'jaxgen: warning: checkpoint {step} in {mngr.directory} cannot be read '
          f'({type(error).__name__}: {reason}); skipping it for an earlier one.',
          file=sys.stderr, flush=True)


def _quiet_abandoned_reads() -> None:
  """Silences the reads that a failed restore leaves behind.

  When one TensorStore read fails, Orbax closes its event loop while the other
  reads of that checkpoint are still in flight; each then reports 'Event loop
  is closed', or its coroutine is closed with GeneratorExit, through
  `sys.unraisablehook`: hundreds of tracebacks after the one-sentence warning.
  This hook drops exactly those and passes on the rest.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'jaxgen_quiet', False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    closed_loop = isinstance(error, RuntimeError) and 'Event loop is closed' in str(error)
    abandoned = isinstance(getattr(error, '__cause__', None), GeneratorExit)
    if not (closed_loop or abandoned):
      previous(unraisable)

  hook.jaxgen_quiet = True
  sys.unraisablehook = hook


def set_aside(workdir: str, steps: list[int], subdir: str = 'checkpoints') -> list[str]:
  """Moves damaged checkpoints `steps` to `WORKDIR/damaged_checkpoints/<step>[.N]`; returns the new paths.

  Moved rather than deleted (the user may still recover them), and out of the
  way of the new checkpoints that a resumed run writes at the same steps.
  Call on process 0 only.
  """
  moved = []
  for step in steps:
    target = os.path.join(os.path.abspath(workdir), 'damaged_checkpoints', str(step))
    base, n = target, 1
    while os.path.exists(target):
      target, n = f'{base}.{n}', n + 1
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(os.path.join(checkpoint_dir(workdir, subdir), str(step)), target)
    print(f'jaxgen: warning: moved the damaged checkpoint {step} to {target}.', file=sys.stderr,
          flush=True)
    moved.append(target)
  return moved


def check_same_model(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                     workdir: str) -> None:
  """Raises JaxgenError when `workdir` holds a run of a different model."""
  def canonical(name, section):
    value = section.get(name)
    value = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    if isinstance(value, dict):
      value = {k: v for k, v in value.items() if k not in EXECUTION_KEYS.get(name, ())}
    return json.dumps(value, sort_keys=True, default=list)  # tuples and lists compare equal

  for name in MODEL_SECTIONS:
    if canonical(name, saved) != canonical(name, config):
      raise JaxgenError(f'{workdir} holds a checkpoint of another model (config.{name} differs); '
                        f'use a new --workdir or the config it was trained with.')
