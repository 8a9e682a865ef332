"""The text of `odenet train --help` (no Hydra import): the config groups and every setting
of a composed configuration, with its value and what configs/ says of it. Hydra's own help
prints the config without the comments that explain each setting; these come from the
comment on each key's line in configs/."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from importlib import resources
from typing import Any

from omegaconf import OmegaConf

CONFIG_MODULE = "odenet.configs"
GROUPS = ("model", "solver", "data", "optim", "experiment")
HYDRA_SETTINGS = ("run.dir", "sweep.dir", "sweep.subdir")  # the ones --help shows


def render(cfg: Any, raw: Any, options: dict[str, list[str]], config_name: str) -> str:
    """``cfg``: the validated config; ``raw``: Hydra's composition of it, its ``hydra``
    node included, unresolved; ``options``: each group's options."""
    files = resources.files(CONFIG_MODULE)
    choices = raw.hydra.runtime.choices
    lines = ["usage: odenet train [key=value ...] [-m]   (Hydra's flags: odenet train "
             "--hydra-help)", "", "Configuration groups (group=option; * marks this "
             "configuration's choice):"]
    lines += [f"  {g}: " + ", ".join(o + "*" * (o == choices.get(g)) for o in options[g])
              for g in GROUPS]
    lines += ["", "Experiment presets (experiment=NAME; configs/experiment/NAME.yaml):"]
    lines += described(_preset(files / "experiment" / f"{o}.yaml", o)
                       for o in options["experiment"])
    lines += ["", "Where runs write (Hydra's settings, configs/hydra/default.yaml; a path with "
              "non-ASCII", "letters, quotes, # or ! goes in quotes: 'hydra.run.dir=\"runs/ü\"'):"]
    hydra_notes = yaml_comments((files / "hydra" / "default.yaml").read_text(encoding="utf-8"))
    hydra_values = dict(_flatten(OmegaConf.to_container(raw.hydra, resolve=False)))
    lines += described((f"hydra.{k}={hydra_values[k]}", hydra_notes.get(k, ""))
                       for k in HYDRA_SETTINGS)
    lines += ["", "Settings (key=value: the value here, then its meaning; "
              "`odenet train model=resnet --help` shows the ResNet's):"]
    notes = _setting_comments(files, config_name, choices)
    values = dict(_flatten(OmegaConf.to_container(
        OmegaConf.masked_copy(raw, [k for k in raw if k != "hydra"]))))
    schema_only = {f"+{k}": v for k, v in _flatten(OmegaConf.to_container(cfg))
                   if k not in values}  # a schema's default no YAML file writes
    lines += described(
        (f"{key}={_yaml_text(value)}",
         notes.get(key, "not in configs/: the schema's default (odenet/config/schema.py, "
                        "odenet/config/model_registry.py); set it with " + key + "=..."
                   if key.startswith("+") else ""))
        for key, value in {**values, **schema_only}.items())
    return "\n".join(lines)


def described(items: Iterable[tuple[str, str]]) -> list[str]:
    """Help lines: each item's name, then its meaning wrapped at column 31 (on the next
    line when the name is longer)."""
    lines = []
    for name, meaning in items:
        setting = f"  {name}"
        if len(setting) > 30 and meaning:
            lines.append(setting)
            setting = ""
        lines += textwrap.wrap(meaning, 100, initial_indent=f"{setting:<31}",
                               subsequent_indent=" " * 31) or [setting]
    return lines


def _preset(path: Any, name: str) -> tuple[str, str]:
    """An experiment preset and the first sentence of its file's header."""
    header = yaml_comments(path.read_text(encoding="utf-8"))[""]
    first = re.match(r"(.+?\.)(\s+[A-Z]|$)", header)  # not "Fig. 3"
    return name, (first.group(1) if first else header).rstrip(".")


def _setting_comments(files: Any, config_name: str, choices: Any) -> dict[str, str]:
    """The root config's comments and those of each group's chosen file (whose header, for
    its name or method, says what it is)."""
    comments = yaml_comments((files / f"{config_name}.yaml").read_text(encoding="utf-8"))
    for group in GROUPS[:-1]:
        text = (files / group / f"{choices[group]}.yaml").read_text(encoding="utf-8")
        comments.update({f"{group}.{k}": c for k, c in yaml_comments(text).items()})
        header, selector = comments.pop(f"{group}."), "method" if group == "solver" else "name"
        comments[f"{group}.{selector}"] = comments[f"{group}.{selector}"] or header
    return comments


def yaml_comments(text: str) -> dict[str, str]:
    """The comment on each key's line of a configs/ YAML file, continued by the comment
    lines indented below it, by dotted key (``train.log_every``); under "" the file's
    header (the comment lines before its first key)."""
    comments: dict[str, str] = {"": ""}
    parents: list[tuple[int, str]] = []
    last, last_indent = "", -1
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if stripped.startswith("# @package"):  # Hydra's directive, not a comment
            continue
        if stripped.startswith("#"):
            if last is not None and indent > last_indent:
                comments[last] = f"{comments[last]} {stripped[1:].strip()}".strip()
            else:
                last = None
            continue
        m = re.match(r"(?P<key>[A-Za-z_]\w*):(?P<value>[^#]*)(#\s?(?P<comment>.*))?$", stripped)
        if m is None:  # a blank line, a list item
            last = None
            continue
        parents = [(i, k) for i, k in parents if i < indent]
        last, last_indent = ".".join([k for _, k in parents] + [m["key"]]), indent
        comments[last] = (m["comment"] or "").strip()
        if not m["value"].strip():  # a section: its keys follow, indented
            parents.append((indent, m["key"]))
    return comments


def _flatten(values: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in values.items():
        out += _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    return out


def _yaml_text(value: Any) -> str:
    """A value as one writes it on the command line (null, true, [60, 100, 140])."""
    if isinstance(value, list):
        return "[" + ", ".join(map(_yaml_text, value)) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) \
        else str(value)
