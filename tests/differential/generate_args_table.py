"""Write `sdxl_train_network_args.tsv` from sd-scripts' own `sdxl_train_network.setup_parser()`.

Runs in the reference environment (`.venv-kohya`, where sd-scripts and its pins are installed), never in
the product's `.venv`:

    .venv-kohya/bin/python tests/differential/generate_args_table.py build/sd-scripts \
        > layers/common/lora_pipeline/data/sdxl_train_network_args.tsv

One row per argparse action, in the parser's order (`--help` left out), tab-separated:
- `name`: the action's `dest`;
- `type`: `bool(store_true)`, `str`, `int`, `float`, `Path`, `int_or_float` (train_util.add_optimizer_arguments'
  own converter), or `list[<type>](nargs=*)`;
- `default`: `str()` of argparse's default, `''` for the empty string;
- `choices`: `str()` of each choice, joined with `|`;
- `defined_in`: `<file relative to sd-scripts>:<function>` of the `add_argument` call, found by watching
  `argparse.ArgumentParser.add_argument` while `setup_parser()` runs.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

COLUMNS = ("name", "type", "default", "choices", "defined_in")


def _type_name(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction):
        return "bool(store_true)"
    if not isinstance(action, argparse._StoreAction):
        raise SystemExit(f"{action.dest}: argparse action {type(action).__name__} has no column value yet")
    converter = action.type or str
    name = getattr(converter, "__name__", repr(converter))
    if action.nargs == "*":
        return f"list[{name}](nargs=*)"
    if action.nargs is not None:
        raise SystemExit(f"{action.dest}: nargs={action.nargs!r} has no column value yet")
    return name


def _text(value: object) -> str:
    return "''" if value == "" else str(value)


def table_rows(sd_scripts: Path) -> list[dict[str, str]]:
    """The rows for the sd-scripts checkout at `sd_scripts` (imported from there, as the image runs it)."""
    root = sd_scripts.resolve()
    sys.path.insert(0, str(root))
    os.chdir(root)  # sd-scripts resolves some relative paths against the working directory
    defined_in: dict[str, str] = {}
    original = argparse.ArgumentParser.add_argument

    def recording_add_argument(
        parser: argparse.ArgumentParser, *names: str, **options: object
    ) -> argparse.Action:
        action = original(parser, *names, **options)
        caller = sys._getframe(1)
        try:
            where = Path(caller.f_code.co_filename).resolve().relative_to(root).as_posix()
        except ValueError:
            where = caller.f_code.co_filename
        defined_in[action.dest] = f"{where}:{caller.f_code.co_name}"
        return action

    argparse.ArgumentParser.add_argument = recording_add_argument  # type: ignore[method-assign]
    try:
        import sdxl_train_network

        parser = sdxl_train_network.setup_parser()
    finally:
        argparse.ArgumentParser.add_argument = original  # type: ignore[method-assign]

    return [
        {
            "name": action.dest,
            "type": _type_name(action),
            "default": _text(action.default),
            "choices": "|".join(_text(choice) for choice in action.choices or ()),
            "defined_in": defined_in[action.dest],
        }
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sd_scripts", type=Path, help="the sd-scripts checkout, e.g. build/sd-scripts")
    options = parser.parse_args()
    rows = table_rows(options.sd_scripts)
    writer = csv.DictWriter(
        sys.stdout, COLUMNS, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n", escapechar=None
    )
    writer.writeheader()
    writer.writerows(rows)


if __name__ == "__main__":
    main()
