"""The argument strings sd-scripts v0.10.1 evaluates: `optimizer_args`, `lr_scheduler_args`, `network_args`.

sd-scripts turns each entry into a keyword argument without checking it:
- `library/train_util.py:get_optimizer` and `get_scheduler_fix`: `key, value = arg.split("=")`, then
  `ast.literal_eval(value)`. "weight_decay=0.01," is the tuple `(0.01,)`; "a=1=2" does not unpack.
- `train_network.py:NetworkTrainer.train`: `key, value = net_arg.split("=", 1)`; the value stays a string
  that the module's `create_network` converts. "conv_dim = 4" is the key "conv_dim " (never read).

`data/evaluated_args.toml` lists, per optimizer, scheduler and network module, the keywords it accepts and
the type each needs; `check_entry` compares a parsed entry with it.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any


class ArgsKind(StrEnum):
    OPTIMIZER = "optimizer"
    SCHEDULER = "scheduler"
    NETWORK = "network"


# The config key whose array feeds each kind of receiver.
CONFIG_KEY = {
    ArgsKind.OPTIMIZER: "optimizer_args",
    ArgsKind.SCHEDULER: "lr_scheduler_args",
    ArgsKind.NETWORK: "network_args",
}


@dataclass(frozen=True)
class Receiver:
    """What one optimizer, scheduler or network module accepts from its argument array."""

    kind: ArgsKind
    name: str
    receiver: str
    passed: tuple[str, ...]
    """Keywords sd-scripts passes itself; a second one is a TypeError ("got multiple values")."""
    keys: dict[str, str]
    """Accepted keyword -> type name (see the data file's header)."""


@dataclass(frozen=True)
class ArgEntry:
    """One entry as sd-scripts parses it: the key exactly as split (spaces kept) and the value it passes on."""

    entry: str
    key: str
    value: Any


@dataclass(frozen=True)
class EntryFinding:
    """A problem with one entry: `error` False means sd-scripts runs but ignores or may refuse the entry."""

    entry: ArgEntry
    message: str
    fix: str
    error: bool


@cache
def receivers() -> dict[tuple[ArgsKind, str], Receiver]:
    """Every receiver of the data file, keyed by kind and name (optimizer names lower-cased, as sd-scripts
    matches its own names case-insensitively)."""
    text = resources.files("lora_pipeline").joinpath("data", "evaluated_args.toml").read_text("utf-8")
    table: dict[tuple[ArgsKind, str], Receiver] = {}
    for kind_name, entries in tomllib.loads(text).items():
        kind = ArgsKind(kind_name)
        for name, spec in entries.items():
            key = name.lower() if kind is ArgsKind.OPTIMIZER else name
            table[(kind, key)] = Receiver(kind, name, spec["receiver"], tuple(spec["passed"]), spec["keys"])
    return table


def receiver_for(kind: ArgsKind, name: str) -> Receiver | None:
    """The receiver sd-scripts would call for `name` (an optimizer_type, lr_scheduler(_type) or module)."""
    return receivers().get((kind, name.lower() if kind is ArgsKind.OPTIMIZER else name))


def parse_entry(kind: ArgsKind, entry: str) -> ArgEntry:
    """`entry` split and evaluated as sd-scripts does; ValueError says why sd-scripts would crash on it."""
    if kind is ArgsKind.NETWORK:
        key, equals, value = entry.partition("=")
        if not equals:
            raise ValueError(f'"{entry}" has no "=": sd-scripts splits each entry into name=value')
        return ArgEntry(entry, key, value)
    parts = entry.split("=")
    if len(parts) != 2:
        raise ValueError(
            f'"{entry}" is not of the form "name=value" with a single "=" (sd-scripts splits on every "=")'
        )
    key, text = parts
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(
            f'"{entry}": sd-scripts reads the value with ast.literal_eval, so it must be a Python literal such '
            'as False, 0.9, (0.9, 0.999) or "text"'
        ) from None
    return ArgEntry(entry, key, value)


def network_kwargs(config: Mapping[str, Any]) -> dict[str, str]:
    """The keyword arguments train_network.py builds from network_args (later entries win, keys as split)."""
    kwargs: dict[str, str] = {}
    for entry in config.get("network_args", []):
        key, equals, value = str(entry).partition("=")
        if equals:
            kwargs[key] = value
    return kwargs


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _literal_fits(type_name: str, value: Any) -> bool:
    if type_name.endswith("?"):
        return value is None or _literal_fits(type_name[:-1], value)
    if type_name == "float":
        return _is_number(value)
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "bool":
        return isinstance(value, bool)
    if type_name == "str":
        return isinstance(value, str)
    if type_name == "float_pair":
        return isinstance(value, tuple | list) and len(value) == 2 and all(map(_is_number, value))
    if type_name == "int_list":
        return isinstance(value, tuple | list) and all(
            isinstance(item, int) and not isinstance(item, bool) for item in value
        )
    raise ValueError(f"unknown type {type_name!r} in evaluated_args.toml")


def _string_fits(type_name: str, value: str) -> bool:
    """networks/*.py create_network: int(value), float(value), or [int(v) for v in value.split(",")]."""
    convert = {"int": int, "float": float, "int_list": int, "float_list": float}.get(type_name)
    if convert is None:
        return True
    items = value.split(",") if type_name.endswith("_list") else [value]
    try:
        for item in items:
            convert(item)
    except ValueError:
        return False
    return True


_TYPE_WORDS = {
    "float": "a number",
    "int": "an integer",
    "bool": "True or False",
    "str": "a string",
    "float_pair": "a pair of numbers such as (0.9, 0.999)",
    "int_list": "integers such as (10, 20)",
    "float_list": "comma-separated numbers",
}


def _type_words(type_name: str, kind: ArgsKind) -> str:
    words = _TYPE_WORDS[type_name.rstrip("?")]
    if kind is ArgsKind.NETWORK and type_name == "int_list":
        words = "comma-separated integers"
    return words + (" or None" if type_name.endswith("?") else "")


def _shown(value: Any) -> str:
    kind = type(value).__name__
    return f"the {kind} {value!r}"


def check_entry(receiver: Receiver, entry: ArgEntry) -> EntryFinding | None:
    """What is wrong with `entry` for `receiver`, or None."""
    where = f'"{entry.entry}" in {CONFIG_KEY[receiver.kind]}'
    stripped = entry.key.strip()
    if entry.key in receiver.passed:
        return EntryFinding(
            entry,
            f"{where}: sd-scripts passes {entry.key} to {receiver.receiver} itself, so a second one stops it "
            "with 'got multiple values for keyword argument'.",
            f"Remove the entry{'; set learning_rate instead' if entry.key == 'lr' else ''}.",
            error=True,
        )
    type_name = receiver.keys.get(entry.key)
    if type_name is None:
        if stripped != entry.key and stripped in receiver.keys:
            ignored = (
                f"{receiver.receiver} never reads {stripped} (the setting is silently lost)"
                if receiver.kind is ArgsKind.NETWORK
                else f"{receiver.receiver} stops with 'unexpected keyword argument'"
            )
            value = entry.value.strip() if isinstance(entry.value, str) else entry.value
            return EntryFinding(
                entry,
                f"{where}: sd-scripts splits at the '=' and keeps the spaces, so the key is {entry.key!r}, not "
                f"{stripped!r}; {ignored}.",
                f'Write "{stripped}={value}" without spaces around the "=".',
                error=True,
            )
        known = ", ".join(receiver.keys) or "none"
        consequence = (
            f"{receiver.receiver} silently ignores it"
            if receiver.kind is ArgsKind.NETWORK
            else f"unless this version of {receiver.receiver} takes it, it stops with 'unexpected keyword argument'"
        )
        return EntryFinding(
            entry,
            f"{where}: {entry.key!r} is not a keyword {receiver.name} is known to accept; {consequence}.",
            f"Check the spelling; known keywords: {known}.",
            error=False,
        )
    if receiver.kind is ArgsKind.NETWORK:
        fits = _string_fits(type_name, entry.value)
        got = f'"{entry.value}"'
    else:
        fits = _literal_fits(type_name, entry.value)
        got = _shown(entry.value)
    if fits:
        return None
    wanted = _type_words(type_name, receiver.kind)
    fix = f"Write {entry.key} as {wanted}."
    if isinstance(entry.value, tuple) and len(entry.value) == 1 and _literal_fits(type_name, entry.value[0]):
        got += " (the trailing comma makes a tuple)"
        fix = f'Write "{entry.key}={entry.value[0]!r}" without the trailing comma.'
    return EntryFinding(
        entry,
        f"{where}: sd-scripts passes {entry.key} on as {got}, but {receiver.receiver} needs {wanted}; the run "
        "would crash after the model has loaded.",
        fix,
        error=True,
    )
