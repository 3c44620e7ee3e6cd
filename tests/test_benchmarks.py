"""The benchmark harness at its smallest size (no timing asserted), and the numbers it derives."""

import json
import os

import jax
import jax.numpy as jnp
import pytest

from benchmarks import compare, sampling, training
from jaxgen import config as config_lib
from jaxgen import families
from jaxgen.errors import JaxgenError
from jaxgen.nn.flops import hlo_flops

SMOKE = 'experiments/ddpm_cifar10.py:smoke'


def test_hlo_flops_of_a_matmul_is_2mnk():
  a = jax.ShapeDtypeStruct((8, 16), jnp.float32)
  b = jax.ShapeDtypeStruct((16, 32), jnp.float32)
  assert hlo_flops(lambda a, b: a @ b, a, b) == 2 * 8 * 16 * 32


def test_paper_unet_flops_match_the_peer_count():
  # torch's FLOP counter gives the peer network 12.11 GFLOP per 32x32 image on a CPU and 12.44
  # on a GPU (PEERS.md), counting attention by its kernels; XLA gives 11.66. Convolutions dominate.
  model = families.build(config_lib.load_config('experiments/ddpm_cifar10.py'), (32, 32, 3))
  assert model.forward_flops() / 1e9 == pytest.approx(12.11, rel=0.05)


@pytest.mark.slow
def test_harness_smoke_and_summary(tmp_path):
  out = str(tmp_path)
  sampling.main(['--config', SMOKE, '--samplers', 'ddpm', '--batch', '2', '--time-steps', '2',
                 '--repeats', '1', '--loop', '--json', f'{out}/jaxgen_sampling.json'])
  sampling.main(['--config', SMOKE, '--samplers', 'ddim', '--batch', '1', '--ddim-steps', '2',
                 '--dtype', 'bfloat16', '--repeats', '1', '--json', f'{out}/jaxgen_ddim.json'])
  # --warmup 0: no untimed step at all (this once raised UnboundLocalError).
  training.main(['--config', SMOKE, '--batch', '8', '--steps', '1', '--warmup', '0', '--repeats', '1',
                 '--json', f'{out}/jaxgen_training.json'])
  with open(f'{out}/jaxgen_sampling.json') as f:
    record = json.load(f)
  row = record['results'][0]
  # A 2-step timing of the 100-step smoke chain, scaled to the whole chain.
  assert (row['steps'], row['timed_steps']) == (100, 2)
  assert row['images_per_s'] == pytest.approx(2 / (row['ms_per_step'] / 1e3 * 100))
  assert row['loop_ms_per_step'] > 0 and row['forward_gflops_per_image'] > 0
  assert 'benchmarks.sampling' in record['command']
  assert record['xla_flags'] == os.environ.get('XLA_FLAGS', '')  # the CPU kernels in use

  # A peer that is exactly half as fast everywhere gives ratios of exactly 2.
  peer_rows = {
      'peer_sampling': [dict(mode='compile-bf16', images_per_s=row['images_per_s'] / 2, peak_bytes=None)],
  }
  with open(f'{out}/jaxgen_training.json') as f:
    train_row = json.load(f)['results'][0]
  with open(f'{out}/jaxgen_ddim.json') as f:
    ddim_rows = json.load(f)['results']
  fastest = min(r['seconds_per_batch'] for r in ddim_rows)
  peer_rows['peer_training'] = [dict(mode='compile-bf16', images_per_s=train_row['images_per_s'] / 2,
                                     peak_bytes=None)]
  peer_rows['peer_ddim'] = [dict(mode='eager-fp32', seconds=2 * fastest, peak_bytes=None)]
  for name, rows in peer_rows.items():
    with open(f'{out}/{name}.json', 'w') as f:
      json.dump({'results': rows}, f)
  # An ablation stage (one config override) at half the default's speed.
  with open(f'{out}/jaxgen_sampling_concat_skips.json', 'w') as f:
    json.dump({'overrides': ['model.split_skip=False'],
               'results': [dict(row, images_per_s=row['images_per_s'] / 2)]}, f)
  summary = compare.summarise(out, {'jaxgen_sampling': 'ok', 'jaxgen_sampling_concat_skips': 'ok'})
  assert summary['sampling']['ratio_vs_best'] == pytest.approx(2.0)
  variant, = summary['variants']
  assert variant['overrides'] == ['model.split_skip=False']
  assert variant['vs_default'] == pytest.approx(0.5)
  assert summary['training']['ratio_vs_best'] == pytest.approx(2.0)
  assert summary['ddim']['ratio_vs_eager_fp32'] == pytest.approx(2.0)
  text = compare.markdown(summary)
  assert '2.00x' in text and 'compile-bf16' in text
  assert '| sampling: model.split_skip=False |' in text and '| 2.000x |' in text


def test_sampling_benchmark_runs_any_family(tmp_path):
  # The autoregressive family: cached and naive side by side, checked to draw the same images.
  record = sampling.main(['--config', 'experiments/pixelcnn_mnist.py:smoke', '--batch', '1',
                          '--repeats', '1', '--warmup', '0'])
  cached, naive = record['results']
  assert (cached['family'], cached['sampler'], naive['sampler']) == ('autoregressive', 'cached', 'naive')
  assert naive['same_images_as'] == 'cached' and naive['same_images'] is True
  assert cached['steps'] == naive['steps'] == 784 and cached['images_per_s'] > 0
  assert 'tflops_per_s' not in cached and naive['tflops_per_s'] > 0  # FLOPs only for whole-network steps


def test_peer_runs_when_installed():
  pytest.importorskip('torch')
  pytest.importorskip('diffusers')
  from benchmarks.peers import diffusers_unet  # pylint: disable=g-import-not-at-top
  record = diffusers_unet.main(['--what', 'ddim', '--modes', 'eager-fp32', '--batch', '1',
                                '--ddim-steps', '1', '--repeats', '1', '--device', 'cpu'])
  assert record['num_params'] == 35_746_307  # the same network as experiments/ddpm_cifar10.py


def test_diffusion_quality_curve_spec():
  from benchmarks import diffusion_quality
  assert diffusion_quality.parse_curve('ddpm,ddim:10,20,heun:5') == [
      ('ddpm', 0), ('ddim', 10), ('ddim', 20), ('heun', 5)]
  assert diffusion_quality.parse_curve('') == []
  with pytest.raises(JaxgenError, match='sampler name'):
    diffusion_quality.parse_curve('10,20')


def test_diffusion_quality_scale_lists():
  from benchmarks import diffusion_quality
  assert diffusion_quality.parse_scales('--classifier-scale', '0,1, 2.5') == [0.0, 1.0, 2.5]
  assert diffusion_quality.parse_scales('--guidance', '') == []
  with pytest.raises(JaxgenError, match=r"--classifier-scale must be comma-separated numbers, got '1,x'\."):
    diffusion_quality.parse_scales('--classifier-scale', '1,x')


def test_flops_of_a_cudnn_attention_model_are_counted_as_xla_attention():
  # cuDNN's attention has no CPU lowering, where FLOPs are counted (and here it cannot even be
  # traced): the counts use XLA's attention, the same products. An H200 run once failed on this.
  from jaxgen.train import trainer  # pylint: disable=g-import-not-at-top
  xla, cudnn = (config_lib.load_config(SMOKE, [f'model.attention={k}', 'train.batch_size=8'])
                for k in ('xla', 'cudnn'))
  s = trainer.setup(xla)
  state = jax.eval_shape(s.init_state)
  data = {'image': jax.ShapeDtypeStruct((8, *s.model.image_shape), jnp.float32),
          'label': jax.ShapeDtypeStruct((8,), jnp.int32)}

  def cudnn_step(state, data):  # stands for the GPU step, which cannot lower for the CPU
    raise NotImplementedError('no CPU lowering')
  want = training.step_flops(xla, s.step_fn, state, data)
  assert want and training.step_flops(cudnn, cudnn_step, state, data) == want
  cudnn_model = families.build(cudnn, s.model.image_shape)
  assert cudnn_model.forward_flops() == s.model.forward_flops() > 0


_FAKE_STAGE = '''
import json, os, sys
json_path = sys.argv[sys.argv.index('--json') + 1]
kind, values = sys.argv[1], [float(v) for v in sys.argv[2].split(',')]
count_file = os.path.join(os.path.dirname(os.path.dirname(json_path)), kind + '.count')
k = int(open(count_file).read()) if os.path.exists(count_file) else 0
open(count_file, 'w').write(str(k + 1))
ips = values[k % len(values)]
if kind == 'peer':
  row = dict(mode='eager-fp32', images_per_s=ips, peak_bytes=None)
else:
  row = dict(sampler='ddpm', batch=4, steps=1000, dtype='float32', images_per_s=ips,
             ms_per_step=4 / ips, peak_bytes=None, program_bytes=1)
json.dump({'results': [row]}, open(json_path, 'w'))
'''


def test_rounds_report_the_median_of_each_figure_and_every_rounds_ratio(tmp_path, monkeypatch):
  # A noisy machine: jaxgen runs at 1, 3 and 2 images/s in three rounds against a steady peer at 2,
  # so the rounds' ratios are 0.5, 1.5 and 1.0 and the summary's (of the medians) is exactly 1.
  (tmp_path / 'fake_stage.py').write_text(_FAKE_STAGE)
  monkeypatch.setenv('PYTHONPATH', str(tmp_path))
  monkeypatch.setattr(compare, 'peer_installed', lambda: True)
  monkeypatch.setitem(compare.PRESETS, 'fake', [
      ('jaxgen_sampling', 'fake_stage', ['jaxgen', '1,3,2']),
      ('peer_sampling', 'fake_stage', ['peer', '2'])])
  out = tmp_path / 'out'
  summary = compare.main(['--preset', 'fake', '--out', str(out), '--rounds', '3'])
  assert summary['sampling']['ratio_vs_best'] == pytest.approx(1.0)
  assert [r['sampling'] for r in summary['rounds']] == pytest.approx([0.5, 1.5, 1.0])
  with open(out / 'jaxgen_sampling.json') as f:
    merged = json.load(f)
  row, = merged['results']
  assert merged['rounds'] == 3 and (row['sampler'], row['batch'], row['images_per_s']) == ('ddpm', 4, 2)
  assert row['ms_per_step'] == pytest.approx(2.0) and row['peak_bytes'] is None
  with open(out / 'round2' / 'jaxgen_sampling.json') as f:
    assert json.load(f)['results'][0]['images_per_s'] == 3
  assert 'sampling 0.50, 1.50, 1.00' in (out / 'summary.md').read_text()
  with pytest.raises(SystemExit, match='--rounds must be at least 1, got 0'):
    compare.main(['--preset', 'fake', '--out', str(tmp_path / 'none'), '--rounds', '0'])
  assert not (tmp_path / 'none').exists()


def test_summary_leaves_out_a_stage_that_did_not_run_this_time(tmp_path):
  # An earlier run's JSON for a stage that was skipped now must not be reported as measured.
  for name, row in (('jaxgen_sampling', dict(batch=4, steps=1000, images_per_s=1.0, ms_per_step=4.0,
                                              peak_bytes=None, program_bytes=1)),
                    ('peer_sampling', dict(mode='eager-fp32', images_per_s=2.0, peak_bytes=None))):
    with open(tmp_path / f'{name}.json', 'w') as f:
      json.dump({'results': [row]}, f)
  fresh = compare.summarise(str(tmp_path), {'jaxgen_sampling': 'ok', 'peer_sampling': 'ok'})
  assert fresh['sampling']['ratio_vs_best'] == pytest.approx(0.5)
  stale = compare.summarise(str(tmp_path), {'jaxgen_sampling': 'out of time', 'peer_sampling': 'ok'})
  assert 'sampling' not in stale and 'Stages not measured: jaxgen_sampling' in compare.markdown(stale)


def test_paired_ratios_are_per_round_then_the_median():
  from benchmarks import paired  # pylint: disable=g-import-not-at-top
  # The machine slows down 4x over three rounds; both contenders slow with it, so each round's
  # ratio is exact although the medians of the times alone would not be comparable.
  rows = paired.summarise({'jaxgen': [1.0, 2.0, 4.0], 'peer': [2.0, 4.0, 4.0]}, 'peer')
  ours, peer = rows
  assert ours['median_ms'] == pytest.approx(2000.0)
  assert (ours['ratio'], ours['ratio_min'], ours['ratio_max']) == pytest.approx((2.0, 1.0, 2.0))
  assert (peer['contender'], peer['ratio']) == ('peer', 1.0)


def test_paired_runs_jaxgen_variants_and_checks_its_arguments_first(tmp_path):
  from benchmarks import paired  # pylint: disable=g-import-not-at-top
  record = paired.main(['--config', SMOKE, '--no-peer', '--batch', '1', '--rounds', '2',
                        '--variant', 'model.split_skip=False', '--json', str(tmp_path / 'p.json')])
  assert [r['contender'] for r in record['results']] == ['jaxgen', 'jaxgen model.split_skip=False']
  assert record['reference'] == 'jaxgen' and len(record['results'][1]['seconds']) == 2
  assert (tmp_path / 'p.json').exists()
  with pytest.raises(SystemExit, match='is a vae experiment'):
    paired.main(['--config', 'experiments/vae_mnist.py', '--no-peer'])
  with pytest.raises(SystemExit, match='the peer is the network of experiments/ddpm_cifar10.py'):
    paired.main(['--config', SMOKE])
  with pytest.raises(SystemExit, match="unknown config key 'model.bogus'"):
    paired.main(['--config', SMOKE, '--no-peer', '--variant', 'model.bogus=1'])


def test_device_script_says_what_is_missing_before_any_work():
  import subprocess  # pylint: disable=g-import-not-at-top
  script = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'benchmarks', 'device.sh')
  env = {k: v for k, v in os.environ.items() if k != 'OUT'}
  usage = subprocess.run(['bash', script], capture_output=True, text=True, env=env, check=False)
  assert usage.returncode == 2 and 'usage: bash benchmarks/device.sh wheels | run' in usage.stderr
  no_out = subprocess.run(['bash', script, 'run'], capture_output=True, text=True, env=env, check=False)
  assert no_out.returncode != 0 and 'where the device tool sets OUT' in no_out.stderr


# ---------------------------------------------------------------- gpu_traffic: reading a compiled program


def test_gpu_traffic_reads_kernels_and_their_bytes_from_a_compiled_program():
  from benchmarks import gpu_traffic as gt
  assert gt.type_bytes('(bf16[2,3]{1,0}, u8[0]{0})') == 12
  assert gt.type_bytes('f32[]') == 4
  # Any backend's optimised HLO reads the same way; here the CPU's.
  f = jax.jit(lambda x, y: jnp.tanh(x * 2.0 + 1.0) @ y)
  rows = gt.kernels(gt.computation(f.lower(jnp.ones((64, 32)), jnp.ones((32, 16))).compile().as_text()))
  tanh = next(r for r in rows if r['op'].endswith('tanh'))
  assert (tanh['bytes_in'], tanh['bytes_out']) == (64 * 32 * 4, 64 * 32 * 4)
  dot = next(r for r in rows if r['op'].endswith('dot_general'))
  assert (dot['bytes_in'], dot['bytes_out']) == ((64 * 32 + 32 * 16) * 4, 64 * 16 * 4)
  summary = gt.summarise(rows, bandwidth=1e9)
  assert summary['kernels'] == len(rows)
  assert summary['gb'] == pytest.approx(sum(r['bytes_in'] + r['bytes_out'] for r in rows) / 1e9)
  assert summary['ms_at_bandwidth'] == pytest.approx(summary['gb'] * 1e3)
  # A scan's body: the kernels of one step.
  g = jax.jit(lambda x: jax.lax.scan(lambda c, _: (jnp.sin(c) * 3.0, None), x, None, length=3)[0])
  body = gt.kernels(gt.loop_body(g.lower(jnp.ones((128,))).compile().as_text()))
  assert any(r['bytes_in'] == r['bytes_out'] == 512 and 'while/body' in r['op'] for r in body)
  with pytest.raises(ValueError, match='no while loop'):
    gt.loop_body('ENTRY %main {\n}\n')
  # FLOPs of the program lowered for a GPU (no GPU or plugin needed to lower): 2MNK, and a
  # scan's body counted once (plus the loop counter's two operations).
  args = (jax.ShapeDtypeStruct((64, 32), jnp.float32), jax.ShapeDtypeStruct((32, 16), jnp.float32))
  assert gt._flops(jax.jit(lambda x, y: x @ y), args) == 2 * 64 * 32 * 16
  looped = jax.jit(lambda x, y: jax.lax.scan(lambda c, _: (c, c @ y), x, None, length=5)[1])
  assert gt._flops(looped, args) == pytest.approx(2 * 64 * 32 * 16, abs=2)


def test_gpu_traffic_checks_its_arguments_before_compiling():
  from benchmarks import gpu_traffic as gt
  with pytest.raises(SystemExit, match='--batch must be at least 1'):
    gt.main(['--batch', '0'])
  with pytest.raises(SystemExit, match='give a diffusion config'):
    gt.main(['--config', 'experiments/dcgan_mnist.py'])
  with pytest.raises(SystemExit, match='no_such_key'):
    gt.main(['--variant', 'model.no_such_key=1'])
