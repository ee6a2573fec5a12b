"""TOML and JSON parsing that treats nesting too deep to parse as a syntax error.

`tomllib` and `json` both recurse once per level of nesting, so `x = [[[...]]]` 100,000 levels deep (or a
safetensors header of nested arrays) raises RecursionError, which no caller expects. Here it is the
parser's own error type (`tomllib.TOMLDecodeError`, `json.JSONDecodeError`), so every caller's existing
"not valid TOML/JSON" message covers it.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from typing import Any

_TOO_DEEP = "values are nested too deeply to parse"


def loads_toml(text: str) -> dict[str, Any]:
    """`tomllib.loads(text)`; raises `tomllib.TOMLDecodeError` for a syntax error or nesting too deep."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError(_TOO_DEEP) from None


def loads_json(text: str, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """`json.loads(text)`; raises `json.JSONDecodeError` for a syntax error or nesting too deep."""
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise json.JSONDecodeError(_TOO_DEEP, text[:80], 0) from None
