#!/usr/bin/env bash
# The GPU measurements of issue 15 in one command: at most 8 minutes, no network.
#   benchmarks/gpu_suite.sh             # on a GPU machine (torch with CUDA; timm optional)
#   benchmarks/gpu_suite.sh --dry-run   # the same code paths at toy size, on a CPU, in seconds
# PYTHON picks the interpreter (default: the checkout's .venv if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# 480 s in all: the suite budgets its stages to 450 s and skips what does not fit
exec timeout --signal=INT --kill-after=10 480 "$PYTHON" benchmarks/gpu_suite.py "$@"
