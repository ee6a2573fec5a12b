"""`lora-pipeline`: command-line entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lora_pipeline.instances import load_instance_table
from lora_pipeline.storage import LocalFolder
from lora_pipeline.validate import validate_dataset
from lora_pipeline_cli.examples import write_broken_dataset, write_example_dataset
from lora_pipeline_cli.render import render_report

EXIT_TRAINABLE, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line input: printed without a traceback, exit code 2."""


def _validate(args: argparse.Namespace) -> int:
    folder = Path(args.path)
    if not folder.is_dir():
        raise UsageError(
            f"{folder} is not a folder. Pass the dataset folder (the one holding <repeats>_<name>/)."
        )
    report = validate_dataset(
        LocalFolder(folder),
        args.dataset or folder.resolve().name,
        instances=load_instance_table(args.prices),
    )
    if args.json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        sys.stdout.write(render_report(report, max_per_code=sys.maxsize if args.all else 10))
    return EXIT_TRAINABLE if report.trainable else EXIT_REJECTED


def _example(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    if target.exists() and any(target.iterdir()):
        raise UsageError(f"{target} is not empty; choose a new folder for the example dataset.")
    writer = write_broken_dataset if args.name == "broken" else write_example_dataset
    writer(target)
    sys.stdout.write(f"Wrote the {args.name!r} example dataset to {target}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-pipeline",
        description="Train SDXL LoRAs from a dataset folder, on AWS or on the embedded AWS.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser(
        "validate",
        help="pre-flight check of a dataset: what Kohya would do with it, what is wrong, what it will cost",
        description="Exit code 0: trainable; 1: rejected (errors listed with their fixes); 2: usage error.",
    )
    validate.add_argument("path", help="the dataset folder")
    validate.add_argument("--dataset", help="dataset name (default: the folder name)")
    validate.add_argument(
        "--json", action="store_true", help="print the full report as JSON (validation.json)"
    )
    validate.add_argument(
        "--all", action="store_true", help="list every problem, not the first 10 of each kind"
    )
    validate.add_argument(
        "--prices", type=Path, help="instance price table (TOML) instead of the packaged one"
    )
    validate.set_defaults(run=_validate)

    example = commands.add_parser(
        "example", help="write a bundled example dataset (drawn procedurally) to a folder"
    )
    example.add_argument(
        "name", choices=["bluebot", "broken"], help="bluebot trains; broken shows a rejection"
    )
    example.add_argument("dir", help="folder to create")
    example.set_defaults(run=_example)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except UsageError as exc:
        sys.stderr.write(f"lora-pipeline: {exc}\n")
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
