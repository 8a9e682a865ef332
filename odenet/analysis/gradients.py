"""`odenet gradients checkpoint=...`: how accurate is each gradient method, at what cost.

For a few training batches, the gradient of the whole network's loss (MNIST models:
cross-entropy, downsampling -> ODE block -> head; a CNF: the NLL of its training points)
with respect to every parameter is computed by each gradient method at each tolerance τ
(rtol = atol = τ); only the ODE block's solve differs between methods:

- ``backprop``, ``adjoint``, ``adjoint_seminorm`` (the adjoint with the seminorm of
  Kidger et al. 2021 in its backward solve), ``checkpoint``: the model's method (or
  ``method=``);
- ``reversible``: ``reversible_method`` (default adaptive_reversible_heun), since the
  reversible gradient needs a reversible scheme.

Each gradient g is compared, as relative L2 errors ||g - g*||_2 / ||g*||_2 over all
parameters together (``error``) and per parameter tensor (``per_parameter``), with

(a) ``reference``: the continuous gradient, a float64 copy of the network solved with
    ``reference_method`` at rtol = atol = ``reference_tol`` with ``reference_gradient``
    (the adjoint by default: O(1) memory at a tight tolerance). It is checked as
    `odenet evaluate` checks its reference: a second solve at 10 x ``reference_tol``
    gives ``reference.check_error``, which should lie far below every error reported
    (``reference.ok``; a warning otherwise);
(b) ``discrete``: the exact gradient of the discrete solve the method performs, i.e.
    backprop through the same method at the same tolerance in the same dtype
    (``error_vs_discrete``) and in float64 (``error_vs_discrete_float64``; a float64
    solve may take other steps than a float32 one, so this is the same discrete scheme,
    not always the same step sequence: compare ``nfe_forward`` of both in
    ``discrete_float64``).

Also per method and tolerance: ``seconds`` (forward + backward, the fastest of
``repeats``), ``nfe_forward`` / ``nfe_backward`` and ``block_activation_mib`` (what
autograd saves for backward during the ODE block's solve, odenet.training.measure.ActivationMeter).
With several batches every number is the mean over batches (errors: also ``error_max``).

``checkpoint=init`` measures an untrained network instead: ``model`` (a registry name
with one ODE block) built with the default solver settings from ``seed``.

Writes ``gradients.json`` next to the checkpoint (atomically; ``out=`` elsewhere) and
``gradients.png`` beside it: error against (a) vs NFE (forward + backward) and vs block
activation memory, one series per method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from odenet.analysis.gradient_error import GRADIENT_METHODS, INIT, GradientsError, measure
from odenet.analysis.gradient_figure import write_figure
from odenet.analysis.probe import ProbeSettings, check, command_main, output_path
from odenet.config.errors import need, one_of
from odenet.config.schema import PRECISIONS, load_settings
from odenet.run.files import write_json
from odenet.run.record import GRADIENTS_FIGURE, GRADIENTS_FILE

CONFIG_FILE = "gradients.yaml"


@dataclass
class GradientsConfig(ProbeSettings):
    tolerances: list[float] = field(default_factory=lambda: [1e-2, 1e-3, 1e-4])
    reference_tol: float = 1e-9
    model: str = "odenet"
    seed: int = 0
    methods: list[str] = field(default_factory=lambda: list(GRADIENT_METHODS))
    reversible_method: str = "adaptive_reversible_heun"
    batches: int = 1
    batch_size: int = 128
    reference_gradient: str = "adjoint"
    discrete_float64: bool = True
    precision: str = "fp32"


def validate(cfg: GradientsConfig) -> GradientsConfig:
    from odenet.solvers import REVERSIBLE_METHODS

    need(bool(cfg.methods),
         f"methods=[] measures nothing; accepted: {', '.join(GRADIENT_METHODS)}")
    for m in cfg.methods:
        need(m in GRADIENT_METHODS, f"methods: {m!r} is not a gradient method; accepted: "
             f"{', '.join(GRADIENT_METHODS)}")
    check(cfg, positive=("batches", "batch_size"))
    one_of("reversible_method", cfg.reversible_method, REVERSIBLE_METHODS)
    one_of("reference_gradient", cfg.reference_gradient, ("adjoint", "backprop"))
    one_of("precision", cfg.precision, PRECISIONS)
    need(cfg.precision == "fp32" or cfg.dtype == "float32",
         f"precision={cfg.precision} autocasts float32 layers: it needs dtype=float32, "
         f"got dtype={cfg.dtype}")
    return cfg


def main(argv: list[str] | None = None) -> int:
    def prepare(argv: list[str]) -> tuple[GradientsConfig, Path]:
        cfg = validate(load_settings(GradientsConfig, CONFIG_FILE, argv, "gradients"))
        if cfg.checkpoint == INIT and not cfg.out:
            raise GradientsError("checkpoint=init has no run directory: give out=PATH.json")
        return cfg, output_path(cfg, GRADIENTS_FILE)

    def run(cfg: GradientsConfig, out: Path) -> tuple[dict, str]:
        figure = out.with_name(GRADIENTS_FIGURE if out.name == GRADIENTS_FILE
                               else out.stem + ".png")
        record = measure(cfg)
        write_json(out, record)
        write_figure(record, figure)
        return record, f"measurements -> {out}, {figure}"

    return command_main(argv, command="gradients", doc=__doc__, config_file=CONFIG_FILE,
                        errors=(GradientsError,), prepare=prepare, run=run)


if __name__ == "__main__":
    raise SystemExit(main())
