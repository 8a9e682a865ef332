"""`make bench-recipe`: the ODE-Net's training cost under two recipes, side by side.

Two `odenet train` processes start together, one thread each (one per core of a 2-core
machine, as `odenet reproduce` runs them): the table1 recipe as it is configured
(configs/experiment/table1.yaml and its experiment_model files) and the reference recipe
(the same without the training levers: no carried step, no penalties, no EMA, 4 epochs,
the recipe of the committed table1 runs). Each trains the first ``--iters`` iterations of
its schedule from scratch (train.stop_after_iters) and logs every iteration; the bench
reads their history.jsonl: NFE per iteration, forward-equivalent evaluations (NFE-F +
3 NFE-B: a backward evaluation is f and its vector-Jacobian product), seconds per
iteration, and the core-seconds an epoch of 469 iterations would take. The ratio is new
over reference, measured at the same time on the same machine.

    python -m bench.bench_recipe [--iters 100] [--model odenet] [--out outputs/bench]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import machine, write_json

ITERS_PER_EPOCH = 469  # 60,000 images in batches of 128
REFERENCE = ["solver.carry_step=false", "optim.ema_decay=null", "optim.epochs=4",
             "model.kinetic_weight=0", "model.jacobian_weight=0", "model.t1_jitter=0"]


def train(model: str, overrides: list[str], iters: int, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "odenet.cli", "train", "experiment=table1", f"model={model}",
           "threads=1", f"train.stop_after_iters={iters}", "train.log_every=1",
           "train.measure_memory=false", "train.tensorboard=false", "train.progress=never",
           f"hydra.run.dir={out}", *overrides]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def summary(run: Path) -> dict:
    iters = [r for r in map(json.loads, (run / "history.jsonl").read_text().splitlines())
             if r["kind"] == "iter"]
    f = statistics.fmean(r["nfe_forward"] for r in iters)
    b = statistics.fmean(r["nfe_backward"] for r in iters)
    sec = statistics.fmean(r["seconds"] for r in iters)
    return {"iters": len(iters), "nfe_forward": f, "nfe_backward": b,
            "forward_equivalents": f + 3 * b, "sec_per_iter": sec,
            "core_seconds_per_epoch": sec * ITERS_PER_EPOCH}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_recipe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=100, help="iterations per recipe")
    ap.add_argument("--model", default="odenet", choices=["odenet", "rknet"])
    ap.add_argument("--out", default="outputs/bench", help="where bench_recipe.json goes")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"table1 recipe": (Path(tmp) / "new", []),
                "reference recipe": (Path(tmp) / "reference", REFERENCE)}
        procs = {name: train(args.model, o, args.iters, d) for name, (d, o) in runs.items()}
        for name, p in procs.items():
            err = p.communicate()[1]
            if p.returncode != 3 or not (runs[name][0] / "history.jsonl").exists():  # 3: stopped
                print(f"bench_recipe: the {name} training failed:\n{err[-2000:]}",
                      file=sys.stderr)
                return 1
        result = {name: summary(d) for name, (d, _) in runs.items()}
    new, ref = result["table1 recipe"], result["reference recipe"]
    print(f"{args.model}, first {args.iters} iterations of each schedule, two 1-thread "
          f"trainings at once ({machine()['cpu']})")
    print(f"{'':18} {'NFE-F':>6} {'NFE-B':>6} {'F+3B':>6} {'s/iter':>7} {'core-s/epoch':>12}")
    for name, r in result.items():
        print(f"{name:18} {r['nfe_forward']:6.1f} {r['nfe_backward']:6.1f} "
              f"{r['forward_equivalents']:6.1f} {r['sec_per_iter']:7.3f} "
              f"{r['core_seconds_per_epoch']:12.0f}")
    ratios = {k: new[k] / ref[k] for k in ("forward_equivalents", "core_seconds_per_epoch")}
    print(f"ratio (table1 / reference): evaluations {ratios['forward_equivalents']:.2f}, "
          f"core-seconds {ratios['core_seconds_per_epoch']:.2f}")
    path = write_json("bench_recipe", {"machine": machine(), "model": args.model,
                                       "iters": args.iters, "results": result,
                                       "ratios": ratios}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
