"""checkpoint.pt: the one save and the one load, used by train, evaluate and the figures.

A checkpoint is a dict of plain data: ``model``, ``optimizer``, ``scheduler`` state
dicts, ``epoch``, ``progress``, ``rng`` and ``config`` (the resolved config as a plain
dict). ``load`` refuses anything that could run code (``weights_only=True``) and
anything that is not an odenet checkpoint, with one line (``CheckpointError``).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from odenet.config.model_registry import MODELS
from odenet.models import build_model, ode_blocks
from odenet.run.files import write_atomic
from odenet.run.record import CHECKPOINT_FILE

REQUIRED = ("model", "config")


class CheckpointError(ValueError):
    """A file that is not a readable odenet checkpoint; the message is one line."""


def save(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    write_atomic(path, buf.getvalue())


def _first_sentence(text: str, limit: int = 200) -> str:
    """torch's message for one line: its first sentence (a long one cut at a word)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).strip()  # torch's message has colours
    line = text.splitlines()[0] if text else ""
    sentence = re.match(r"(.+?[.!?])(\s|$)", line)
    first = (sentence.group(1) if sentence else line).rstrip(".")
    return first if len(first) <= limit else first[:limit].rsplit(" ", 1)[0] + " ..."


def load(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path`` as plain data."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (give a run's {CHECKPOINT_FILE})")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, foreign or unsafe: not a checkpoint
        first = _first_sentence(str(e))
        raise CheckpointError(f"{path}: not a readable checkpoint "
                              f"({type(e).__name__}{': ' + first if first else ''})") from None
    if not isinstance(ck, dict) or any(k not in ck for k in REQUIRED):
        raise CheckpointError(f"{path}: missing 'model'/'config' entries "
                              "(expected a checkpoint.pt written by odenet train)")
    return ck


def load_model(path: str | os.PathLike, map_location: Any = "cpu"
               ) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(the trained network in eval mode, its config as a plain dict, the checkpoint). The
    weights are those Table 1 reports: the moving average where the run kept one
    (optim.ema_decay), else the trained weights."""
    ck = load(path, map_location)
    config = ck["config"]
    try:
        model = build_model(config.get("model", {}), config.get("solver"), strict=False)
        model.load_state_dict(reported_weights(ck))
    except (ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model "
                              f"({str(e).splitlines()[0][:200]})") from None
    return model.to(map_location).eval(), config, ck


def reported_weights(ck: dict[str, Any]) -> dict[str, Any]:
    """The model state dict of a checkpoint's reported weights (see load_model)."""
    if "ema" not in ck:
        return ck["model"]
    prefix = "module."  # torch.optim.swa_utils.AveragedModel's
    return {k[len(prefix):]: v for k, v in ck["ema"].items() if k.startswith(prefix)}


def load_ode_model(path: str | os.PathLike, map_location: Any = "cpu"
                   ) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """``load_model`` for a model with exactly one ODE block that can be re-solved (what
    evaluate and gradients do, through ``model.ode_input``, ``ode_block``, ``ode_output``);
    CheckpointError naming the models that have one otherwise."""
    model, config, ck = load_model(path, map_location)
    if getattr(model, "ode_block", None) is None or len(ode_blocks(model)) != 1:
        having = [s.name for s in MODELS.values() if s.ode_block]
        count = len(ode_blocks(model)) or "no"
        raise CheckpointError(f"{path}: model {config.get('model', {}).get('name')!r} has "
                              f"{count} ODE block(s); a model with one is needed "
                              f"({', '.join(having)})")
    why = model.ode_refusal()
    if why:
        raise CheckpointError(f"{path}: {why}")
    return model, config, ck
