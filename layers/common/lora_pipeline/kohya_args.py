"""The arguments `sdxl_train_network.py` of sd-scripts v0.10.1 accepts, as typed specs.

The facts come from `data/sdxl_train_network_args.tsv` (one row per argparse argument: name, type,
default, choices, where it is defined), read from sd-scripts itself. The config rules check every
key of a user's `config.toml` against these specs.
"""

from __future__ import annotations

import csv
import io
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
    return ArgSpec(row["name"], kind, _typed(kind, row["default"]), choices, row["defined_in"])


@cache
def argument_specs() -> dict[str, ArgSpec]:
    """Every argument of sdxl_train_network.py v0.10.1, by name, in the table's order."""
    text = resources.files("lora_pipeline").joinpath("data", _TABLE).read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    return {spec.name: spec for spec in map(_spec, rows)}
