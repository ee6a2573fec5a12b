"""The arguments `sdxl_train_network.py` of sd-scripts v0.10.1 accepts, as typed specs.

The facts come from `data/sdxl_train_network_args.tsv` (one row per argparse argument: name, type,
default, choices, where it is defined), read from sd-scripts itself, plus one column of ours: `range`, the
interval of values sd-scripts can use (argparse does not check it; a value outside fails or misbehaves at
run time), and `policy` / `policy_reason`: keys the pipeline sets itself or refuses, and why. The config rules check every key of a user's `config.toml` against these specs.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources

SD_SCRIPTS_VERSION = "v0.10.1"
_TABLE = "sdxl_train_network_args.tsv"

ArgValue = str | int | float | bool


class ArgKind(StrEnum):
    """How a TOML value for the argument must look (the table's `type` column)."""

    STR = "str"
    INT = "int"
    FLOAT = "float"
    INT_OR_FLOAT = "int_or_float"
    FLAG = "bool(store_true)"
    STR_LIST = "list[str](nargs=*)"
    FLOAT_LIST = "list[float](nargs=*)"
    PATH = "Path"


@dataclass(frozen=True)
class ArgSpec:
    name: str
    kind: ArgKind
    default: ArgValue | None
    # Values argparse would accept; empty when any value of the kind goes. argparse's `None` choice is
    # left out: TOML has no null, so a config can only reach it by leaving the key out.
    choices: tuple[ArgValue, ...]
    defined_in: str
    range: ValueRange | None = None
    policy: KeyPolicy | None = None
    policy_reason: str = ""


class KeyPolicy(StrEnum):
    """What the pipeline does with a key it will not pass on (the table's `policy` column)."""

    OWNED = "owned"  # the training container sets it
    SECRET = "secret"
    UPLOAD = "upload"  # talks to an outside service
    UNSUPPORTED = "unsupported"


_INTERVAL = re.compile(r"([\[(])(-?[0-9.]+),(-?[0-9.]*)([\])])")


@dataclass(frozen=True)
class ValueRange:
    """An interval in the table's notation: `[1,)` at least 1, `(0,)` above 0, `[0,1)` from 0 below 1."""

    low: float
    low_inclusive: bool
    high: float | None
    high_inclusive: bool

    @classmethod
    def parse(cls, text: str) -> ValueRange:
        match = _INTERVAL.fullmatch(text)
        if match is None:
            raise ValueError(f"bad range {text!r} in {_TABLE}")
        opening, low, high, closing = match.groups()
        return cls(float(low), opening == "[", float(high) if high else None, closing == "]")

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_inclusive else value > self.low
        if self.high is None:
            return above
        return above and (value <= self.high if self.high_inclusive else value < self.high)

    def describe(self) -> str:
        """The rule in words, e.g. "must be at least 1"."""
        low = f"{self.low:g}"
        if self.high is None:
            if self.low_inclusive:
                return "must not be negative" if self.low == 0 else f"must be at least {low}"
            return f"must be greater than {low}"
        high = f"{self.high:g}"
        if self.low_inclusive and self.high_inclusive:
            return f"must be between {low} and {high}"
        return f"must be from {low} up to (not including) {high}"


def _typed(kind: ArgKind, text: str) -> ArgValue | None:
    if text == "None":
        return None
    if kind is ArgKind.FLAG:
        return text == "True"
    if kind is ArgKind.INT:
        return int(text)
    if kind is ArgKind.FLOAT:
        return float(text)
    if kind is ArgKind.INT_OR_FLOAT:
        number = float(text)
        return int(number) if number.is_integer() and "." not in text else number
    if text == "''":
        return ""
    return text


def _spec(row: dict[str, str]) -> ArgSpec:
    kind = ArgKind(row["type"])
    choices = tuple(
        value for value in (_typed(kind, c) for c in row["choices"].split("|") if c) if value is not None
    )
    value_range = ValueRange.parse(row["range"]) if row["range"] else None
    policy = KeyPolicy(row["policy"]) if row["policy"] else None
    return ArgSpec(
        row["name"],
        kind,
        _typed(kind, row["default"]),
        choices,
        row["defined_in"],
        value_range,
        policy,
        row["policy_reason"],
    )


@cache
def argument_specs() -> dict[str, ArgSpec]:
    """Every argument of sdxl_train_network.py v0.10.1, by name, in the table's order."""
    text = resources.files("lora_pipeline").joinpath("data", _TABLE).read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    return {spec.name: spec for spec in map(_spec, rows)}


def keys_with_policy(policy: KeyPolicy) -> dict[str, str]:
    """The arguments with `policy`, each with the table's reason."""
    return {name: spec.policy_reason for name, spec in argument_specs().items() if spec.policy is policy}
