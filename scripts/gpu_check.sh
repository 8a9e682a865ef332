#!/usr/bin/env bash
# A prepared check of odenet on a GPU (logic: bench/gpu_check.py; tested by
# tests/test_gpu_check.py; docs/gpu.md): smoke runs of every MNIST model (fp32, bf16,
# precision=auto, model.compile), the CNF, one ODE-Net quick epoch, a resumed run, odenet
# evaluate and gradients, and the `make bench` cases, all on the device, and a JSON summary
# whose verdicts give the precision that ran and the memory. Under 8 minutes on one GPU.
#   scripts/gpu_check.sh                     on CUDA; summary in outputs/gpu_check/gpu_check.json
#   DEVICE=cuda:1 scripts/gpu_check.sh       another GPU
#   DEVICE=cpu QUICK=1 scripts/gpu_check.sh  seconds on a CPU: checks the check itself
#   OUT=dir scripts/gpu_check.sh             the summary into dir (run directories stay
#                                            under outputs/gpu_check/runs/, or --runs DIR)
#   PY=/path/to/python scripts/gpu_check.sh  another interpreter than .venv/bin/python
# An offline GPU machine needs the repository with data/ (MNIST/raw: `make data` on a
# connected machine) and a Python with a CUDA build of torch, odenet's dependencies and
# torchdiffeq (the dev extra): see docs/gpu.md. Without data/ only the steps that need no
# MNIST run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
quick=()
case "${QUICK:-0}" in
  0|"") ;;
  *) quick=(--quick) ;;
esac
exec "$PY" -m bench.gpu_check --device "${DEVICE:-cuda}" --out "${OUT:-outputs/gpu_check}" \
  ${quick[@]+"${quick[@]}"} "$@"
