"""The command layer: ``odenet <command>`` (dispatch.py) and the Hydra app behind
``odenet train`` (app.py), the only place Hydra is imported. Everything below it takes
validated configs and plain arguments."""

from odenet.cli.dispatch import main

__all__ = ["main"]
