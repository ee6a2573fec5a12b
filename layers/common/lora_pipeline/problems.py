"""Problems found while validating a dataset, and the catalogue of every problem code.

Each rule module declares its codes once with `define(...)`; the catalogue feeds the README's
troubleshooting table and lets tests check that every code is documented.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

FILE_PLACEHOLDER = "<file>"


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Problem(BaseModel):
    """One finding. `file` is relative to the dataset root (None when it concerns the whole dataset)."""

    model_config = ConfigDict(frozen=True)

    severity: Severity
    code: str
    file: str | None
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class ProblemCode:
    code: str
    severity: Severity
    summary: str
    fix: str

    def at(self, file: str | None, message: str, fix: str | None = None) -> Problem:
        """A problem of this kind in `file`; `fix` overrides the catalogue's generic fix, whose `<file>`
        placeholders become the file's name, quoted for a shell."""
        fix = fix or self.fix
        if file is not None:
            fix = fix.replace(FILE_PLACEHOLDER, shlex.quote(file))
        return Problem(severity=self.severity, code=self.code, file=file, message=message, fix=fix)


_CATALOGUE: dict[str, ProblemCode] = {}


def define(code: str, severity: Severity, summary: str, fix: str) -> ProblemCode:
    if code in _CATALOGUE:
        raise ValueError(f"problem code {code} is defined twice")
    entry = ProblemCode(code, severity, summary, fix)
    _CATALOGUE[code] = entry
    return entry


def catalogue() -> dict[str, ProblemCode]:
    """Every code the validator can emit (importing `lora_pipeline.validate` registers them all)."""
    return dict(_CATALOGUE)


def has_errors(problems: list[Problem]) -> bool:
    return any(p.severity is Severity.ERROR for p in problems)
