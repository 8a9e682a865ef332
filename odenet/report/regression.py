"""CI regression: fresh `experiment=regression` runs against committed reference metrics.

    python -m odenet.report.regression                  # all four models, compare
    python -m odenet.report.regression --models mlp,odenet
    python -m odenet.report.regression --update         # rewrite the reference (review it!)

The reference (``outputs/reference/regression.json``) holds, per model, the metrics of
one run of ``odenet train experiment=regression model=M`` and the bands a new run must
stay in. A band is ``{"abs": a}`` (|new - ref| <= a), ``{"rel": r}``
(|new - ref| <= r * |ref|) or ``{"exact": true}``; null must stay null. Bands are wide
enough for the run-to-run noise of other CPUs and builds (same machine: identical), and
tight enough to catch a model that does not learn, a parameter-count change, a solver
whose step control changed, or an adjoint that stores the forward graph.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from odenet.config.command_line import ArgumentParser
from odenet.config.model_registry import models_of
from odenet.report.runs import ReportError, load_runs
from odenet.run import record
from odenet.run.files import write_atomic

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "outputs" / "reference" / "regression.json"
MODELS = tuple(models_of(record.CLASSIFY))  # Table 1's models
EXPERIMENT = "regression"

# metric -> band. Why these widths:
# - test_error: on the reference machine runs are bit-identical (one thread, fixed
#   seed); elsewhere float rounding moves early training by a few points. 0.10 keeps
#   every conv net's reference + band below 0.874, the error of a net stuck on one
#   class on these 1,000 test images, and the MLP's far below it.
# - NFE: one more or one fewer dopri5 step is +-6 evaluations of ~20-26 (+-30 %); a
#   changed tableau or controller moves it by more.
# - activations: exact on one build; 0.35 allows the NFE shift above (RK-Net's block
#   memory is proportional to NFE) while an adjoint that keeps the graph (x10-x80) fails.
BANDS = {
    "params": {"exact": True},
    "test_error": {"abs": 0.10},
    "nfe_forward_mean": {"rel": 0.35},
    "nfe_backward_mean": {"rel": 0.35},
    "activation_mib": {"rel": 0.35},
    "activation_block_mib": {"rel": 0.35},
}
KEYS = tuple(BANDS) + ("solver_method", "solver_rtol", "solver_adjoint", "train_error",
                       "epochs", "sec_per_iter")


def within(new, ref, band: dict) -> bool:
    if ref is None or new is None:
        return new is None and ref is None
    if band.get("exact"):
        return new == ref
    if "abs" in band:
        return abs(new - ref) <= band["abs"] + 1e-12
    if "rel" in band:
        return abs(new - ref) <= band["rel"] * abs(ref) + 1e-12
    raise ValueError(f"bad band {band!r}: expected abs, rel or exact")


def _band_text(band: dict) -> str:
    if band.get("exact"):
        return "exact"
    return f"±{band['abs']:g}" if "abs" in band else f"±{band['rel'] * 100:g} %"


def compare(new: dict, ref: dict, bands: dict) -> list[str]:
    """One line per metric of ``new`` outside its band around ``ref`` ([] = pass)."""
    out = []
    if new.get("status") != "finished":
        return [f"status {new.get('status')!r} (reason: {new.get('reason')}), expected "
                "'finished'"]
    for key, band in bands.items():
        if not within(new.get(key), ref.get(key), band):
            out.append(f"{key} = {new.get(key)!r}, reference {ref.get(key)!r} "
                       f"({_band_text(band)})")
    return out


def _show(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else repr(v)


def band_lines(new: dict, ref: dict, bands: dict) -> list[str]:
    """Every metric of ``new`` against its band around ``ref``, each with its verdict."""
    return [f"{key} = {_show(new.get(key))}, reference {_show(ref.get(key))} "
            f"({_band_text(band)}): "
            f"{'ok' if within(new.get(key), ref.get(key), band) else 'OUTSIDE'}"
            for key, band in bands.items()]


def load_reference(path: Path = REFERENCE) -> dict:
    try:
        ref = json.loads(path.read_text())
    except OSError as e:
        raise ReportError(f"{path}: cannot read the regression reference "
                          f"({e.strerror}); create it with --update") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(ref.get("models"), dict) or not isinstance(ref.get("bands"), dict):
        raise ReportError(f"{path}: expected 'models' and 'bands' objects")
    return ref


def train_command(models, out_dir: Path) -> list[str]:
    exe = Path(sys.executable).with_name("odenet")
    head = [str(exe)] if exe.exists() else [sys.executable, "-m", "odenet.cli"]
    return head + ["train", "--multirun", f"experiment={EXPERIMENT}",
                   f"model={','.join(models)}", f"hydra.sweep.dir={out_dir}"]


def run_models(models, out_dir: Path) -> dict[str, dict]:
    """Train each model at experiment=regression (one Hydra multirun); metrics by model."""
    # from the repository root: data.root (data/) is relative to it
    proc = subprocess.run(train_command(models, out_dir.resolve()), capture_output=True,
                          text=True, check=False, cwd=REPO)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ReportError(f"odenet train exited {proc.returncode}: {tail[0]}")
    runs, invalid = load_runs([out_dir], history=False)
    got = {r.model: r.metrics for r in runs}
    missing = [m for m in models if m not in got]
    if missing:
        why = f" ({invalid[0].path}: {invalid[0].reason})" if invalid else ""
        raise ReportError(f"no valid metrics.json for {', '.join(missing)} below "
                          f"{out_dir}{why}")
    return got


def fresh_runs(models, reference: dict, out_dir: Path) -> dict[str, dict]:
    """{model: metrics} of fresh runs of ``models``, each of which ``reference`` has."""
    unknown = [m for m in models if m not in reference["models"]]
    if unknown:
        raise ReportError(f"no reference for model(s) {', '.join(unknown)}; the reference "
                          f"has {', '.join(reference['models'])}")
    return run_models(models, out_dir)


def check(models, reference: dict, out_dir: Path) -> dict[str, list[str]]:
    """{model: violations} for fresh runs of ``models`` against ``reference``."""
    got = fresh_runs(models, reference, out_dir)
    return {m: compare(got[m], reference["models"][m], reference["bands"]) for m in models}


def make_reference(models, out_dir: Path) -> dict:
    got = run_models(models, out_dir)
    some = next(iter(got.values()))
    return {
        "about": "odenet train experiment=regression model=M: reference metrics and the "
                 "bands a fresh run must stay in (odenet/report/regression.py)",
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()}: {os.cpu_count()} CPU cores, {platform.machine()}",
        "torch_version": some.get("torch_version"),
        "git_commit": some.get("git_commit"),
        "bands": BANDS,
        "models": {m: {k: got[m].get(k) for k in KEYS} for m in models},
    }


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m odenet.report.regression",
                        description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated subset of {', '.join(MODELS)}")
    ap.add_argument("--update", action="store_true",
                    help=f"write a new reference to {REFERENCE.relative_to(REPO)}")
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        ap.error(f"--models {args.models!r}: accepted: {', '.join(MODELS)}")
    with tempfile.TemporaryDirectory(prefix="odenet-regression-") as tmp:
        out = Path(args.out or tmp)
        try:
            if args.update:
                ref = make_reference(models, out)
                write_atomic(REFERENCE, json.dumps(ref, indent=1) + "\n")
                print(f"wrote {REFERENCE} for {', '.join(models)}")
                return 0
            reference = load_reference()
            got = fresh_runs(models, reference, out)
        except ReportError as e:
            print(f"regression: error: {e}", file=sys.stderr)
            return 2
    return print_verdicts(got, reference)


def print_verdicts(got: dict[str, dict], reference: dict) -> int:
    """Each model's verdict, then each metric against its band; 1 when any failed."""
    failed = 0
    for m, new in got.items():
        ref, bands = reference["models"][m], reference["bands"]
        problems = compare(new, ref, bands)
        print(f"{m}: {'ok' if not problems else 'FAILED'}")
        status = [p for p in problems if p.startswith("status ")]
        for line in status or band_lines(new, ref, bands):
            print(f"  {line}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
