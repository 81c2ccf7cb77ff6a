"""Command-line options generated from a study's frozen config dataclass, so each default is written once.

Every field becomes ``--field-name``: its type from the annotation (``int``, ``float``, ``str``, ``bool`` as a
switch, ``X | None``, ``tuple[X, ...]`` as several values, ``tuple[X, X]`` as exactly two), its default from
the dataclass, its help from the comment on the field's line (or ``metadata["help"]``). Metadata refines it:
``choices``, ``min`` (smallest int allowed), ``repeat`` (``--name A --name B`` instead of ``--name A B``),
``metavar``, ``group`` (fields of one group are mutually exclusive) and ``positional``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import time
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

C = TypeVar("C")

_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.+?))?\s*$")
_COMMENT_LINE = re.compile(r"^\s+#\s?(.*)$")


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment at the end of its line, or else the comment lines just above it."""
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        c = _COMMENT_LINE.match(line)
        if c:
            above.append(c.group(1).strip())
            continue
        m = _FIELD.match(line)
        if m and m.group(1) not in comments and (m.group(2) or above):
            comments[m.group(1)] = m.group(2) or " ".join(above)
        above = []
    return comments


def _bounded_int(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(
                f"must be a positive integer, got {text}" if low == 1 else f"must be >= {low}, got {text}")
        return value

    parse.__name__ = "int"  # argparse names the type in its "invalid int value" message
    return parse


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per field of the dataclass ``cls`` to ``parser``."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        tp = _unwrap_optional(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs: dict[str, Any] = {"help": meta.get("help", comments.get(f.name))}
        if tp is bool and default is True:
            kwargs["help"] = f"turn off: {kwargs['help']}"
        elif kwargs["help"] and default is not None and default is not False and default != () \
                and "default" not in kwargs["help"]:
            kwargs["help"] += f" (default {' '.join(map(str, default)) if isinstance(default, tuple) else default})"
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        if tp is bool:
            kwargs["action"] = "store_true" if not default else "store_false"
        else:
            item = tp
            if typing.get_origin(tp) is tuple:
                args = typing.get_args(tp)
                item = args[0]
                if len(args) == 2 and args[1] is Ellipsis:
                    if meta.get("repeat"):
                        kwargs["action"] = "append"
                    else:
                        kwargs["nargs"] = "+"
                else:
                    kwargs["nargs"] = len(args)
            kwargs["type"] = _bounded_int(meta["min"]) if "min" in meta else item
            if "choices" in meta:
                kwargs["choices"] = list(meta["choices"])
        if "action" in kwargs and kwargs["action"] == "append":
            kwargs["default"] = None  # argparse appends to a given default list; the config's default applies
        else:
            kwargs["default"] = list(default) if isinstance(default, tuple) else default
        name = f.name.replace("_", "-")
        target = parser
        if "group" in meta:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group()
            target = groups[meta["group"]]
        if required:
            kwargs["required"] = True
        if meta.get("positional"):
            target.add_argument(f.name, nargs="?", **kwargs)
        else:
            no = "no-" if tp is bool and default else ""
            target.add_argument(f"--{no}{name}", dest=f.name, **kwargs)


def from_args(cls: type[C], args: argparse.Namespace) -> C:
    """The config ``cls`` from parsed options (lists become tuples; an unset repeatable option its default)."""
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name)
        if value is None and f.metadata.get("repeat"):
            continue
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def timestamped(prefix: str) -> Path:
    """``runs/PREFIX-YYYYmmdd-HHMMSS``: the default folder of a run that is not resumed."""
    return Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
