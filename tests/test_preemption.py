"""SIGTERM mid-run: the trainer saves the step it reached and exits cleanly; the next run resumes."""

import json
import os
import signal
import subprocess
import sys
import time

from jaxgen.train import checkpoint
from conftest import REPO

SMOKE = str(REPO / 'experiments' / 'ddpm_mnist.py') + ':smoke'


def test_sigterm_saves_and_exits_then_resume_finishes(mnist_env, tmp_path):
  workdir = tmp_path / 'run'
  args = [sys.executable, '-m', 'jaxgen.cli', 'train', '--config', SMOKE, '--workdir', str(workdir),
          '--config.train.num_steps=100000', '--config.train.log_every=1',
          '--config.train.checkpoint_every=100000', '--config.train.sample_every=0']
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ))
  metrics = workdir / 'metrics.jsonl'
  deadline = time.time() + 240
  while not (metrics.exists() and metrics.read_text().count('\n') >= 3):
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, 'training did not start'
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert 'Received signal' in out
  saved = checkpoint.latest_step(str(workdir))
  assert saved is not None and saved >= 3
  logged = [json.loads(line)['step'] for line in metrics.read_text().splitlines()]
  assert saved >= max(logged)

  # The same command resumes from the saved step (here with a reachable end).
  done = subprocess.run(args[:-4] + [f'--config.train.num_steps={saved + 2}'], capture_output=True,
                        text=True, timeout=240, env=dict(os.environ))
  assert done.returncode == 0, done.stderr
  assert f'Resuming from step {saved}' in done.stdout
  assert checkpoint.latest_step(str(workdir)) == saved + 2
