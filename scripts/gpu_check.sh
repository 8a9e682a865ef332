#!/usr/bin/env bash
# A prepared check of odenet on a GPU (logic: bench/gpu_check.py; tested by
# tests/test_gpu_check.py): smoke runs of every MNIST model, one ODE-Net quick epoch and
# the `make bench` cases, all on the device, and a JSON summary. Under 8 minutes on one GPU.
#   scripts/gpu_check.sh                     on CUDA; summary in outputs/gpu_check/gpu_check.json
#   DEVICE=cpu QUICK=1 scripts/gpu_check.sh  seconds on a CPU: checks the check itself
#   OUT=dir scripts/gpu_check.sh             the summary into dir (run directories stay
#                                            under outputs/gpu_check/runs/, or --runs DIR)
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
