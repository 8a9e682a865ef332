#!/usr/bin/env bash
# CI regression check by hand: fresh `odenet train experiment=regression` runs of each
# model compared with outputs/reference/regression.json (logic: odenet/report/regression.py;
# the tests run it too: tests/test_regression.py).
#   scripts/regression.sh                         all four models
#   scripts/regression.sh --models mlp,odenet     a subset
#   scripts/regression.sh --update                rewrite the reference (then review the diff)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m odenet.report.regression "$@"
