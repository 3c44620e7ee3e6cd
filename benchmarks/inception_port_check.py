"""Checks the Flax FID Inception port against pytorch-fid itself, with random weights.

The real weights (pt_inception-2015-12-05-6726825d.pth) cannot be fetched
here, so this builds pytorch-fid's own network with RANDOM weights, converts
its state_dict with `convert_torch_state_dict`, and compares the pool3
features and the 1008-way logits on the same uint8 images at several sizes:
32x32 (upsampled, the CIFAR case), 299x299 (no resize) and 512x512
(downsampled, where `jax.image.resize` would antialias and PyTorch does not).

Random weights prove the port only if every parameter matters, so: conv and fc
weights are He-normal, BN scale/shift are random, and the BN running stats are
first calibrated on a batch of random images (noise, and upsampled noise) (so that activations keep a
realistic scale through 94 conv layers: pool3 features come out with mean
~0.4 like the real network's, and the stats are far from their 0/1 defaults
and differ per channel) and then perturbed at random (so that they are not
exactly the statistics of any batch).

The reference is pytorch-fid's `InceptionV3([3], resize_input=True,
normalize_input=True, use_fid_inception=True)` (its features) and the
underlying `fid_inception_v3()` network's `fc` on those features (the logits).
Both run in float32 as pytorch-fid does; a float64 run of the same torch
network is the ground truth that shows how much of the float32 gap is each
side's rounding.

    python -m benchmarks.inception_port_check [--batch 8] [--sizes 32,299,512] [--seed 0]

Needs torch, torchvision and pytorch-fid (not jaxgen dependencies); see
benchmarks/results/inception_port.md for how they were installed and
`import_pytorch_fid` for the one shim a CUDA torchvision next to a CPU torch needs.
"""

import argparse
import contextlib
import datetime
import platform
import sys
import time
from unittest import mock

import jax
import numpy as np
from flax import traverse_util

from jaxgen.eval import inception


def import_pytorch_fid():
  """Imports torch, torchvision and pytorch_fid.inception; returns the three modules.

  The only torchvision wheels on PyPI are CUDA builds, whose C++ ops (`_C.so`,
  linked to libtorch_cuda) cannot load next to a CPU-only torch. torchvision
  then still works for its pure-Python models (all pytorch-fid uses), except
  that `torchvision/_meta_registrations.py` registers fake kernels for
  `torchvision::nms` and `torchvision::qnms` without checking that the ops
  exist, so `import torchvision` raises "operator torchvision::nms does not
  exist". Only in that case, the import is retried with
  `torch.library.register_fake` skipping `torchvision::*` ops (fake kernels are
  for torch.compile tracing of detection ops: nothing Inception touches).
  """
  import torch  # pylint: disable=g-import-not-at-top
  try:
    import torchvision  # pylint: disable=g-import-not-at-top
  except RuntimeError as e:
    if 'torchvision::' not in str(e):
      raise
    for name in [m for m in sys.modules if m == 'torchvision' or m.startswith('torchvision.')]:
      del sys.modules[name]  # drop the half-imported package before retrying
    register_fake = torch.library.register_fake

    def register_fake_except_torchvision(op, *args, **kwargs):
      if isinstance(op, str) and op.startswith('torchvision::'):
        return lambda fn: fn
      return register_fake(op, *args, **kwargs)

    torch.library.register_fake = register_fake_except_torchvision
    try:
      import torchvision  # pylint: disable=g-import-not-at-top,redefined-outer-name
    finally:
      torch.library.register_fake = register_fake
  from pytorch_fid import inception as pfi  # pylint: disable=g-import-not-at-top
  return torch, torchvision, pfi


def build_pytorch_fid(seed: int = 0, calib_batch: int = 4):
  """pytorch-fid's FID network with random weights.

  Returns (wrapper, net): `wrapper` is `pytorch_fid.inception.InceptionV3([3],
  resize_input=True, normalize_input=True, use_fid_inception=True)`; `net` is
  the `fid_inception_v3()` it was built from (same modules; it also holds
  `fc`), whose `state_dict()` has the names of the real .pth file.
  """
  torch, torchvision, pfi = import_pytorch_fid()

  # fid_inception_v3() ends by downloading and loading the real weights; skip
  # only that step (no network here), keeping everything else pytorch-fid's own.
  with contextlib.ExitStack() as stack:
    stack.enter_context(mock.patch.object(pfi, 'load_state_dict_from_url', lambda *a, **k: {}))
    stack.enter_context(mock.patch.object(torchvision.models.Inception3, 'load_state_dict',
                                          lambda self, *a, **k: None))
    net = pfi.fid_inception_v3()
  with mock.patch.object(pfi, 'fid_inception_v3', lambda: net):
    wrapper = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True)

  gen = torch.Generator().manual_seed(seed)
  bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
      elif isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
      elif isinstance(m, torch.nn.Linear):
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.in_features ** 0.5)
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    # Calibrate the running stats on one batch (momentum=None: plain average).
    for m in bns:
      m.reset_running_stats()
      m.momentum = None
    # Half pixel noise at 299x299, half 32x32 noise that the wrapper upsamples
    # (smooth): real photos lie in between, and so then do the test inputs.
    wrapper.train()
    wrapper(torch.cat([torch.rand((calib_batch // 2, 3, 299, 299), generator=gen),
                       torch.nn.functional.interpolate(
                           torch.rand((calib_batch - calib_batch // 2, 3, 32, 32), generator=gen),
                           size=(299, 299), mode='bilinear', align_corners=False)]))
    wrapper.eval()
    net.eval()
    # Then perturb them, lightly: the perturbations compound over the network's
    # depth (0.3 std / x e^(0.5 N) here blows the features up ~1000x).
    for m in bns:
      m.momentum = 0.1
      std = m.running_var.sqrt()
      m.running_mean.add_(0.05 * std * torch.randn(m.running_mean.shape, generator=gen))
      m.running_var.mul_(torch.exp(0.1 * torch.randn(m.running_var.shape, generator=gen)))
  return wrapper, net


def torch_forward(wrapper, net, images_u8: np.ndarray, dtype=None) -> tuple[np.ndarray, np.ndarray]:
  """pytorch-fid on uint8 NHWC images, loaded its way (ToTensor: /255) -> (features, logits)."""
  import torch  # pylint: disable=g-import-not-at-top
  dtype = dtype or torch.float32
  wrapper.to(dtype)
  net.to(dtype)
  x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).to(dtype) / 255.0
  with torch.no_grad():
    feats = wrapper(x)[0].flatten(1)  # [B, 2048]
    logits = net.fc(feats)  # [B, 1008]
  wrapper.to(torch.float32)
  net.to(torch.float32)
  return feats.numpy(), logits.numpy()


def diff_stats(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
  """Max abs difference, relative to max |ref|, and relative L2."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  d = np.abs(ours - ref)
  return {'max_abs': float(d.max()), 'max_rel': float(d.max() / np.abs(ref).max()),
          'rel_l2': float(np.linalg.norm(ours - ref) / np.linalg.norm(ref)),
          'ref_max_abs': float(np.abs(ref).max())}


def resize_check(sizes=((32, 32), (299, 299), (300, 300), (512, 512), (40, 700))) -> dict:
  """Max abs difference of `resize_bilinear_torch` vs F.interpolate and vs jax.image.resize."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  out = {}
  for h, w in sizes:
    x = rng.random((2, h, w, 3), dtype=np.float32)
    ours = np.asarray(inception.resize_bilinear_torch(x, (299, 299)))
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode='bilinear',
                        align_corners=False).permute(0, 2, 3, 1).numpy()
    jir = np.asarray(jax.image.resize(x, (2, 299, 299, 3), 'bilinear'))
    out[f'{h}x{w}'] = (float(np.abs(ours - ref).max()), float(np.abs(jir - ref).max()))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--sizes', default='32,299,512')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()

  torch, torchvision, _ = import_pytorch_fid()
  import pytorch_fid  # pylint: disable=g-import-not-at-top
  print(f'date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, '
        f'{jax.device_count()} jax device(s) ({jax.devices()[0].platform}), torch threads '
        f'{torch.get_num_threads()}')
  print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, pytorch-fid '
        f'{pytorch_fid.__version__}, jax {jax.__version__}, numpy {np.__version__}')

  t0 = time.perf_counter()
  wrapper, net = build_pytorch_fid(args.seed)
  state_dict = {k: v.numpy() for k, v in net.state_dict().items()}
  variables = jax.device_put(inception.convert_torch_state_dict(state_dict))
  n_params = sum(v.size for k, v in state_dict.items() if 'num_batches_tracked' not in k)
  print(f'built + converted {len(state_dict)} state_dict entries ({n_params:,} numbers) '
        f'in {time.perf_counter() - t0:.1f}s')

  print('\nresize 299x299 vs F.interpolate(bilinear, align_corners=False): max abs diff')
  print(f'{"input":>8} {"ours":>10} {"jax.image.resize":>17}')
  for size, (ours, jir) in resize_check().items():
    print(f'{size:>8} {ours:10.2e} {jir:17.2e}')

  rng = np.random.default_rng(args.seed + 1)
  rows = []
  for s in (int(v) for v in args.sizes.split(',')):
    images = rng.integers(0, 256, (args.batch, s, s, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    feats, logits = jax.block_until_ready(inception.inception_features(variables, images))
    t_jax = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_f, ref_l = torch_forward(wrapper, net, images)
    t_torch = time.perf_counter() - t0
    f64_f, f64_l = torch_forward(wrapper, net, images, dtype=torch.float64)
    rows.append((s, 'features', diff_stats(feats, ref_f), diff_stats(feats, f64_f),
                 diff_stats(ref_f, f64_f)))
    rows.append((s, 'logits', diff_stats(logits, ref_l), diff_stats(logits, f64_l),
                 diff_stats(ref_l, f64_l)))
    print(f'\n{s}x{s}: jax {t_jax:.1f}s (incl. compile), torch {t_torch:.1f}s; '
          f'feature mean {ref_f.mean():.3f} std {ref_f.std():.3f}, logit std {ref_l.std():.3f}')

  # The running stats matter: with their defaults (mean 0, var 1) the features are far off.
  flat = {k: (np.zeros_like(v) if k[-1] == 'mean' else np.ones_like(v)) if k[0] == 'batch_stats' else v
          for k, v in traverse_util.flatten_dict(jax.device_get(variables)).items()}
  default_stats = traverse_util.unflatten_dict(flat)
  feats_default, _ = inception.inception_features(default_stats, images)
  print(f'\nsensitivity: features with BN running stats reset to 0/1 differ from pytorch-fid by '
        f'rel L2 {diff_stats(feats_default, ref_f)["rel_l2"]:.2f} (on the last size)')

  print(f'\nbatch {args.batch} random uint8 images; jax = this port (float32), torch32 = pytorch-fid '
        '(float32), torch64 = pytorch-fid in float64')
  print('| input | output | max abs jax-torch32 | max rel | rel L2 | max abs jax-torch64 '
        '| max abs torch32-torch64 | max abs ref |')
  print('|---|---|---|---|---|---|---|---|')
  for s, name, d32, d64, t64 in rows:
    print(f'| {s}x{s} | {name} | {d32["max_abs"]:.2e} | {d32["max_rel"]:.2e} | {d32["rel_l2"]:.2e} '
          f'| {d64["max_abs"]:.2e} | {t64["max_abs"]:.2e} | {d32["ref_max_abs"]:.3g} |')


if __name__ == '__main__':
  main()
