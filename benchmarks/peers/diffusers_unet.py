"""The peer of ../shared/PEERS.md: diffusers' `UNet2DModel` with the DDPM CIFAR-10 configuration.

    python -m benchmarks.peers.diffusers_unet --what sampling --batch 1024 \
        --modes eager-bf16,compile-bf16 --json peer.json

Needs the optional extra `peers` (torch, diffusers); jaxgen never imports it.
Random weights (speed does not depend on them). Methods, as PEERS.md states
them:

- sampling: `DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear')`
  stepping the model; `--warmup-steps` untimed steps, then `--time-steps`
  timed ones, scaled to the 1000-step chain.
- ddim: `DDIMScheduler` with `--ddim-steps` steps, the whole chain timed
  (latency, median of --repeats runs after one warm-up run).
- training: AdamW, epsilon-prediction MSE at a uniform random timestep;
  `--warmup-steps` untimed steps, then `--train-steps` timed ones.

Modes: eager or `torch.compile` (default mode), fp32 or bf16. bf16 sampling
runs the model in bfloat16 weights and activations (diffusers'
`torch_dtype=torch.bfloat16`); bf16 training autocasts to bfloat16 with float32
weights. Peak memory is torch's allocator peak over each mode (reset before it).
"""

import argparse
import json
import statistics
import sys
import time
from typing import Any

PEER_CONFIG = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'),
    up_block_types=('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
    norm_num_groups=32, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False,
    freq_shift=1, act_fn='silu', attention_head_dim=None, time_embedding_type='positional')


def _torch():
  try:
    import diffusers  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(f'the peer needs torch and diffusers: pip install -e ".[peers]" ({e}).') from e
  return torch, diffusers


class Peer:
  """The peer model on one device, with a synchronising clock."""

  def __init__(self, device: str, dropout: float = 0.1):
    torch, diffusers = _torch()
    self.torch, self.diffusers = torch, diffusers
    self.device = torch.device(device)
    torch.manual_seed(0)
    self.model = diffusers.UNet2DModel(**PEER_CONFIG, dropout=dropout).to(self.device)
    self.num_params = sum(p.numel() for p in self.model.parameters())

  def sync(self) -> None:
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize()

  def clock(self) -> float:
    self.sync()
    return time.perf_counter()

  def reset_peak(self) -> None:
    if self.device.type == 'cuda':
      self.torch.cuda.empty_cache()
      self.torch.cuda.reset_peak_memory_stats()

  def peak_bytes(self) -> int | None:
    return int(self.torch.cuda.max_memory_allocated()) if self.device.type == 'cuda' else None

  def forward_flops(self) -> float:
    """FLOPs of one forward pass on one image, by torch's FLOP counter (as PEERS.md)."""
    torch = self.torch
    from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
    x = torch.randn(1, 3, 32, 32, device=self.device)
    t = torch.tensor([500], device=self.device)
    self.model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
      self.model(x, t)
    return float(counter.get_total_flops())

  def _net(self, mode: str, dtype):
    """(callable model, dtype): eval copy in `dtype`, compiled or not."""
    model = self.model.to(dtype).eval()
    return (self.torch.compile(model) if mode.startswith('compile') else model), dtype

  def sampling(self, mode: str, batch: int, warmup_steps: int, time_steps: int) -> dict[str, Any]:
    torch = self.torch
    dtype = torch.bfloat16 if mode.endswith('bf16') else torch.float32
    self.reset_peak()
    net, dtype = self._net(mode, dtype)
    sched = self.diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear')
    sched.set_timesteps(1000)
    steps = list(sched.timesteps[:warmup_steps + time_steps])
    first_s = None
    with torch.inference_mode():
      # Made inside inference mode like every later x, so the compiled model sees one kind of input.
      x = torch.randn(batch, 3, 32, 32, device=self.device, dtype=dtype)
      t0 = self.clock()
      for i, t in enumerate(steps):
        if i == 1:
          first_s = self.clock() - t0
        if i == warmup_steps:
          t0 = self.clock()
        eps = net(x, t.to(self.device)).sample
        x = sched.step(eps, t, x).prev_sample
      seconds = (self.clock() - t0) / time_steps
    self.model.float()
    assert torch.isfinite(x).all()
    return dict(what='sampling', mode=mode, batch=batch, timed_steps=time_steps, steps=1000,
                ms_per_step=1e3 * seconds, images_per_s=batch / (1000 * seconds),
                first_call_s=first_s, peak_bytes=self.peak_bytes())

  def ddim(self, mode: str, batch: int, steps: int, repeats: int) -> dict[str, Any]:
    torch = self.torch
    dtype = torch.bfloat16 if mode.endswith('bf16') else torch.float32
    self.reset_peak()
    net, dtype = self._net(mode, dtype)
    sched = self.diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule='linear')
    sched.set_timesteps(steps)

    def chain():
      x = torch.randn(batch, 3, 32, 32, device=self.device, dtype=dtype)
      for t in sched.timesteps:
        x = sched.step(net(x, t.to(self.device)).sample, t, x).prev_sample
      return x

    with torch.inference_mode():
      t0 = self.clock()
      chain()
      first_s = self.clock() - t0
      times = []
      for _ in range(repeats):
        t0 = self.clock()
        chain()
        times.append(self.clock() - t0)
    self.model.float()
    seconds = statistics.median(times)
    return dict(what='ddim', mode=mode, batch=batch, steps=steps, seconds=seconds,
                ms_per_step=1e3 * seconds / steps, images_per_s=batch / seconds,
                first_call_s=first_s, peak_bytes=self.peak_bytes())

  def training(self, mode: str, batch: int, warmup_steps: int, train_steps: int) -> dict[str, Any]:
    torch = self.torch
    bf16 = mode.endswith('bf16')
    self.reset_peak()
    model = self.model.float().train()
    net = torch.compile(model) if mode.startswith('compile') else model
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.0)
    sched = self.diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear')
    gen = torch.Generator(device=self.device).manual_seed(0)
    x0 = torch.rand(batch, 3, 32, 32, device=self.device, generator=gen) * 2 - 1

    def step():
      noise = torch.randn(x0.shape, device=self.device, generator=gen)
      t = torch.randint(0, 1000, (batch,), device=self.device, generator=gen)
      noisy = sched.add_noise(x0, noise, t)
      with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
        pred = net(noisy, t).sample
      loss = torch.nn.functional.mse_loss(pred.float(), noise)
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
      return loss

    t0 = self.clock()
    step()
    first_s = self.clock() - t0
    for _ in range(warmup_steps - 1):
      step()
    t0 = self.clock()
    for _ in range(train_steps):
      loss = step()
    seconds = (self.clock() - t0) / train_steps
    model.eval()
    return dict(what='training', mode=mode, batch=batch, timed_steps=train_steps,
                ms_per_step=1e3 * seconds, images_per_s=batch / seconds, first_call_s=first_s,
                peak_bytes=self.peak_bytes(), loss=float(loss.detach()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--what', default='sampling', help='comma-separated: sampling, ddim, training')
  parser.add_argument('--modes', default='eager-fp32,eager-bf16,compile-fp32,compile-bf16')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--device', default=None, help='cuda or cpu (default: cuda if there is one)')
  parser.add_argument('--warmup-steps', type=int, default=3)
  parser.add_argument('--time-steps', type=int, default=40)
  parser.add_argument('--ddim-steps', type=int, default=50)
  parser.add_argument('--train-steps', type=int, default=30)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--deadline', type=float, default=0, help='skip modes starting after this many s')
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)

  torch, diffusers = _torch()
  diffusers.utils.logging.set_verbosity_error()  # its note on casting with .to() is not for us
  device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
  end = time.monotonic() + args.deadline if args.deadline else None
  peer = Peer(device)
  record = dict(peer='diffusers.UNet2DModel', torch=torch.__version__, diffusers=diffusers.__version__,
                device=torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
                command='python -m benchmarks.peers.diffusers_unet ' + ' '.join(sys.argv[1:]),
                num_params=peer.num_params, forward_gflops_per_image=peer.forward_flops() / 1e9,
                results=[], skipped=[])
  print(f'peer {record["peer"]} ({record["num_params"]:,} parameters, '
        f'{record["forward_gflops_per_image"]:.2f} GFLOP/image) on {record["device"]}', flush=True)
  for what in args.what.split(','):
    for mode in args.modes.split(','):
      if end is not None and time.monotonic() > end:
        record['skipped'].append(dict(what=what, mode=mode, batch=args.batch))
        print(f'{what:8} {mode:12} skipped: past the deadline', flush=True)
        continue
      if what == 'sampling':
        r = peer.sampling(mode, args.batch, args.warmup_steps, args.time_steps)
      elif what == 'ddim':
        r = peer.ddim(mode, args.batch, args.ddim_steps, args.repeats)
      elif what == 'training':
        r = peer.training(mode, args.batch, args.warmup_steps, args.train_steps)
      else:
        raise SystemExit(f'unknown --what {what!r}; use sampling, ddim or training.')
      record['results'].append(r)
      peak = '-' if r['peak_bytes'] is None else f'{r["peak_bytes"] / 2 ** 30:.2f} GiB'
      print(f'{what:8} {mode:12} batch {r["batch"]:5d} {r["images_per_s"]:10.2f} images/s '
            f'{r["ms_per_step"]:9.2f} ms/step first call {r["first_call_s"]:6.1f} s peak {peak}',
            flush=True)
      if args.json:
        with open(args.json, 'w') as f:
          json.dump(record, f, indent=2)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(record, f, indent=2)
  return record


if __name__ == '__main__':
  main(sys.argv[1:])
