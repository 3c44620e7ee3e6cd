#!/usr/bin/env bash
# Issue 9 on a lent accelerator (one NVIDIA GPU, no network), as one prepared call.
#
#   bash benchmarks/device.sh wheels              # here, with the package index: fills .whl/
#   bash benchmarks/device.sh run [BUDGET] [PRESET] # there (device tool, carry [".whl"])
#
# The device image has jax (CUDA), flax, optax, orbax-checkpoint, chex, torch and diffusers'
# other needs, but not diffusers (the peer), ml_collections (jaxgen's configs) or
# importlib_metadata; `wheels` downloads those three, pure Python, pinned to the versions of
# the 2026-11 records. `run` installs them to /tmp/site, prints the GPU and jax, runs
# `benchmarks.compare --preset PRESET` (default h200) within BUDGET seconds (default 450, so that
# a 600-s call keeps time for the start and the copy back) and copies the stage JSON files,
# summary and log to $OUT (the Perfetto profiles stay behind; the log has their kernel tables).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  wheels)
    rm -rf .whl && mkdir .whl
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      -d .whl diffusers==0.42.1 ml_collections==1.1.0 importlib_metadata==10.2.0
    ls .whl
    ;;
  run)
    budget="${2:-450}"
    preset="${3:-h200}"
    : "${OUT:?run on the device machine, where the device tool sets OUT}"
    ls .whl/*.whl > /dev/null || { echo 'no .whl/: run "bash benchmarks/device.sh wheels" here and carry .whl'; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    rm -rf /tmp/bench && mkdir -p /tmp/bench  # nothing from an earlier call on a warm machine
    {
      date
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
      python3 -c 'import jax; print("jax", jax.__version__, jax.devices())'
      python3 -m benchmarks.compare --preset "$preset" --out /tmp/bench --budget "$budget"
    } 2>&1 | tee /tmp/bench/log.txt
    # $OUT takes at most 8 files: the log, the summary, and every stage's JSON in one archive.
    cp /tmp/bench/log.txt /tmp/bench/summary.md /tmp/bench/summary.json "$OUT/"
    tar -C /tmp/bench --exclude='profile_*' -czf "$OUT/bench.tar.gz" .
    ;;
  *)
    echo 'usage: bash benchmarks/device.sh wheels | run [BUDGET_S] [PRESET]' >&2
    exit 2
    ;;
esac
