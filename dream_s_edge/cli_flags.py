"""Command-line flags generated from frozen config dataclasses, so a new option is a typed field.

`add_config_flags(parser, VisionTrainConfig, ["lr", "seed"])` adds `--lr` and `--seed` with the
field's type, default and comment-free help; `config_from_args` builds the config back.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable

_TYPES = {"int": int, "float": float, "str": str}


def _parse_type(annotation: str) -> tuple[type | None, bool]:
    """Maps an annotation string like 'int | None' to (int, optional)."""
    parts = [p.strip() for p in str(annotation).split("|")]
    optional = "None" in parts
    names = [p for p in parts if p != "None"]
    return (_TYPES.get(names[0]) if len(names) == 1 else None), optional


def add_config_flags(
    parser: argparse.ArgumentParser, config_cls, names: Iterable[str], overrides_only: bool = False
) -> None:
    """Adds one `--flag` per named field of `config_cls` (bool fields become on/off switches).

    With `overrides_only`, flags the user leaves out are absent from the parsed namespace, so a
    preset's values survive (see `given_flags`).
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    for name in names:
        field = fields[name]
        flag = "--" + name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else None
        if overrides_only:
            default = argparse.SUPPRESS
        if str(field.type) == "bool":
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default)
            continue
        kind, _ = _parse_type(field.type)
        if kind is None:
            raise TypeError(f"{config_cls.__name__}.{name} has a type the CLI cannot parse: {field.type}")
        shown = field.default if field.default is not dataclasses.MISSING else None
        parser.add_argument(flag, dest=name, type=kind, default=default, help=f"default: {shown}")


def config_from_args(config_cls, args: argparse.Namespace, names: Iterable[str], **extra):
    """Builds `config_cls` from the parsed flags named in `names` (plus `extra` fields)."""
    values = {name: getattr(args, name) for name in names}
    return config_cls(**values, **extra)


def given_flags(args: argparse.Namespace, names: Iterable[str]) -> dict:
    """The named fields the user set on the command line (for `overrides_only` flags)."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}
