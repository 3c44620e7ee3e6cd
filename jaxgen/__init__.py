"""jaxgen: deep generative image models in JAX/Flax.

Train with `jaxgen train`, sample with `jaxgen sample`, or from Python:

    import jaxgen
    run = jaxgen.load_run('runs/ddpm_mnist')
    images = run.generate(64, seed=0)  # uint8 [64, H, W, C]
"""

from jaxgen.errors import JaxgenError


def load_run(workdir: str, step: int | None = None):
  """Loads a trained run (config, EMA parameters, sample functions); see `jaxgen.run`."""
  from jaxgen.run import load_run as _load_run  # pylint: disable=g-import-not-at-top
  return _load_run(workdir, step)


__all__ = ['JaxgenError', 'load_run']
