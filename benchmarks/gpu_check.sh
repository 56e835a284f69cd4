#!/usr/bin/env bash
# The GPU check of the triton backend (benchmarks/gpu_check.py): correctness, then operator- and model-level
# timings against cuDNN's depthwise conv, in about 5 minutes (much of it Triton compiling the kernels on a
# cold cache). Run from anywhere on a machine with a CUDA GPU and torch, triton and timm installed (PYTHON=...
# picks the interpreter; the repository's .venv when it has one). Writes gpu_check.md into benchmarks/results/
# section by section (or the file given with --out), so a run cut short keeps what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import sys, torch, triton, timm; sys.exit(0 if torch.cuda.is_available() else "gpu_check: no CUDA device")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 540 "$PY" benchmarks/gpu_check.py "$@"
