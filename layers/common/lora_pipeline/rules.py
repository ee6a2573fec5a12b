"""A registry of validation rules, in the style of ruff or cfn-lint.

Each rule is a small function registered under a stable rule id (`KV101`), a kebab-case name and the place
in sd-scripts v0.10.1 whose behaviour it mirrors (`library/train_util.py:get_optimizer`). A rule receives the
context of its rule set (the config being checked and a way to report problems) and reports through the
problem codes of `lora_pipeline.problems`; it never raises. Rules run in registration order, so a rule that
drops a bad value runs before the rules that read it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

Context = TypeVar("Context")

# Unknown keys a rule lists one by one (with a spelling suggestion each); the rest are counted in one problem,
# so a file of thousands of typos costs one summary line and no difflib search for each.
MAX_UNKNOWN_KEYS_REPORTED = 20

_RULE_ID = re.compile(r"[A-Z]{2}\d{3}")
_RULE_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_ALL_IDS: set[str] = set()


@dataclass(frozen=True)
class Rule(Generic[Context]):
    id: str
    """Stable identifier: two letters for the rule set, three digits."""
    name: str
    mirrors: str
    """The sd-scripts v0.10.1 file and function (or the library) whose behaviour the rule reproduces."""
    check: Callable[[Context], None]

    @property
    def summary(self) -> str:
        """The first paragraph of the rule's docstring, on one line."""
        paragraph = (self.check.__doc__ or "").strip().split("\n\n", 1)[0]
        return " ".join(line.strip() for line in paragraph.splitlines())


class RuleSet(Generic[Context]):
    """An ordered set of rules over one kind of context (`prefix` starts every rule id of the set)."""

    def __init__(self, prefix: str, title: str) -> None:
        self.prefix = prefix
        self.title = title
        self._rules: dict[str, Rule[Context]] = {}

    def rule(
        self, id: str, name: str, mirrors: str
    ) -> Callable[[Callable[[Context], None]], Callable[[Context], None]]:
        """Register the decorated function as rule `id`; ids are unique across every rule set."""
        if not (_RULE_ID.fullmatch(id) and id.startswith(self.prefix)):
            raise ValueError(f"rule id {id!r} must be {self.prefix} followed by three digits")
        if not _RULE_NAME.fullmatch(name):
            raise ValueError(f"rule name {name!r} must be kebab-case")
        if id in _ALL_IDS:
            raise ValueError(f"rule id {id} is registered twice")

        def register(check: Callable[[Context], None]) -> Callable[[Context], None]:
            _ALL_IDS.add(id)
            self._rules[id] = Rule(id, name, mirrors, check)
            return check

        return register

    def __iter__(self) -> Iterator[Rule[Context]]:
        return iter(self._rules.values())

    def __getitem__(self, id: str) -> Rule[Context]:
        return self._rules[id]

    def run(self, context: Context) -> None:
        for rule in self._rules.values():
            rule.check(context)
