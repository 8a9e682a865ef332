#!/usr/bin/env bash
# A tolerance sweep from the shell: Hydra multirun over solver.rtol (atol follows rtol),
# one run directory per job under outputs/sweeps/<date>/<time>/<n>/.
# Then `odenet table outputs/sweeps/...` and `odenet figures outputs/sweeps/...`.
#
#   scripts/sweep_tolerances.sh                          ODE-Net, quick scale, 4 tolerances
#   scripts/sweep_tolerances.sh model=rknet              RK-Net instead (memory grows with NFE)
#   scripts/sweep_tolerances.sh solver.adjoint_norm=default,seminorm   a second sweep axis
#   scripts/sweep_tolerances.sh hydra/launcher=joblib hydra.launcher.n_jobs=2 threads=1
#
# Defaults below are overridden by any argument naming the same key (Hydra: last wins).
set -euo pipefail
cd "$(dirname "$0")/.."
ODENET="${ODENET:-.venv/bin/odenet}"
[ -x "$ODENET" ] || ODENET=odenet
exec "$ODENET" train --multirun \
  experiment=quick model=odenet \
  solver.rtol=1e-1,1e-2,1e-3,1e-4 \
  "$@"
