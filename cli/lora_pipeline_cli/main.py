"""`lora-pipeline`: command-line entry point (parsing and dispatch; the work lives in the sibling modules)."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import boto3
import botocore.exceptions

from lora_pipeline.aws.run_table import RunTable
from lora_pipeline.dataset import UNSUPPORTED_IMAGE_EXTENSIONS
from lora_pipeline.dataset_source import LocalFolder
from lora_pipeline.instances import load_instance_table
from lora_pipeline.job_settings import StackLimits
from lora_pipeline.kohya_contract import IMAGE_EXTENSIONS, parse_subset_folder
from lora_pipeline.names import DATASET_NAME
from lora_pipeline.report import ValidationReport
from lora_pipeline.s3_layout import DATASETS_PREFIX, dataset_prefix, parse_s3_uri
from lora_pipeline.safetensors_lora import Architecture
from lora_pipeline.validate import build_validation_report
from lora_pipeline_cli import local, progress, runs, zip_input
from lora_pipeline_cli.examples import write_broken_dataset, write_example_dataset
from lora_pipeline_cli.inspect_lora import InspectUsageError, inspect_path
from lora_pipeline_cli.render import render_report, render_status
from lora_pipeline_cli.stack import Stack, StackError, connect, require_training_image, stack_name_from
from lora_pipeline_cli.upload import plan_upload, remove_keys, stale_keys, upload_dataset

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
DISTRIBUTION = "sdxl-lora-pipeline"


class UsageError(Exception):
    """Bad command-line input: printed without a traceback, exit code 2."""


def _stack(args: argparse.Namespace) -> Stack:
    if args.local:
        endpoint, name = local.running_endpoint()
        return connect(
            name, boto3.Session(region_name=local.REGION, **local.LOCAL_CREDENTIALS), endpoint_url=endpoint
        )
    return connect(stack_name_from(args.stack), boto3.Session(region_name=args.region))


@contextmanager
def _local_dataset(path: str, dataset: str | None) -> Iterator[tuple[LocalFolder, str]]:
    """The dataset folder given (or unpacked from a .zip) and its name: --dataset, else the folder's."""
    given = Path(path)
    if not zip_input.is_zip(given):
        yield LocalFolder(given), dataset or given.resolve().name
        return
    if not given.is_file():
        raise UsageError(f"{given} does not exist. Pass the dataset folder or a .zip of it.")
    try:
        with zip_input.unpacked(given) as (source, name):
            yield source, dataset or name
    except zip_input.UnsafeZip as exc:
        raise UsageError(str(exc)) from None


def _is_subset_folder(folder: Path) -> bool:
    """A `<repeats>_<tokens>` folder holding images and no subset of its own: a subset, not a dataset."""
    if parse_subset_folder(folder.name) is None:
        return False
    image_suffixes = {*IMAGE_EXTENSIONS, *UNSUPPORTED_IMAGE_EXTENSIONS}
    children = list(folder.iterdir())
    holds_subsets = any(c.is_dir() and parse_subset_folder(c.name) is not None for c in children)
    return not holds_subsets and any(c.suffix.lower() in image_suffixes for c in children if c.is_file())


def _validate_folder(
    source: LocalFolder, dataset: str, args: argparse.Namespace, limits: StackLimits
) -> ValidationReport:
    folder = source.root
    if not folder.is_dir():
        raise UsageError(
            f"{folder} is not a folder. Pass the dataset folder (the one holding <repeats>_<name>/) or a .zip of it."
        )
    if _is_subset_folder(folder):
        parent = folder.resolve().parent
        raise UsageError(
            f"{folder} is a subset folder (<repeats>_<class tokens>), not a dataset: pass its parent, "
            f"`lora-pipeline {args.command} {parent}`."
        )
    return build_validation_report(source, dataset, limits, load_instance_table(args.prices))


def _print_report(report: ValidationReport, args: argparse.Namespace) -> None:
    if args.json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        sys.stdout.write(render_report(report, max_per_code=sys.maxsize if args.all else 10))


def _validate(args: argparse.Namespace) -> int:
    # A stack named on the command line lends its limits (instance types, volume, runtime); else the defaults.
    stack = _stack(args) if args.stack or args.local else None
    limits = stack.limits() if stack else StackLimits()
    if args.path.startswith("s3://"):
        from lora_pipeline.aws.s3_source import S3DatasetSource, S3ObjectReader

        bucket, key = parse_s3_uri(args.path)
        dataset = key.removeprefix(DATASETS_PREFIX).strip("/")
        if not key.startswith(DATASETS_PREFIX) or not dataset or "/" in dataset:
            raise UsageError(
                f"{args.path}: give a dataset folder of the pipeline bucket, s3://<bucket>/datasets/<name>/."
            )
        s3 = stack.client("s3") if stack else boto3.Session(region_name=args.region).client("s3")
        source = S3DatasetSource(s3, bucket, dataset)
        report = build_validation_report(
            source, dataset, limits, load_instance_table(args.prices), S3ObjectReader(s3)
        )
    else:
        with _local_dataset(args.path, args.dataset) as (source, dataset):
            report = _validate_folder(source, dataset, args, limits)
    _print_report(report, args)
    return EXIT_OK if report.trainable else EXIT_REJECTED


def _upload(args: argparse.Namespace) -> int:
    with _local_dataset(args.path, args.dataset) as (source, dataset):
        return _upload_folder(source, dataset, args)


def _upload_folder(source: LocalFolder, dataset: str, args: argparse.Namespace) -> int:
    if not DATASET_NAME.fullmatch(dataset):
        raise UsageError(
            f"{dataset!r} cannot be a dataset name: use letters, digits, '.', '_' and '-' (pass --dataset NAME)."
        )
    stack = _stack(args)
    report = _validate_folder(source, dataset, args, stack.limits())
    if not report.trainable:
        _print_report(report, args)
        if not args.force:
            sys.stderr.write(
                "Not uploaded: the dataset would be rejected. Fix the errors above, or pass --force.\n"
            )
            return EXIT_REJECTED
    if not args.local:
        require_training_image(stack)
    folder = source.root
    active = RunTable(stack.client("dynamodb"), stack.table_name).dataset_state(dataset)[0].active
    plan = plan_upload(folder)
    for skipped in plan.skipped:
        sys.stderr.write(f"skipped {skipped} (not part of a dataset)\n")
    s3 = stack.client("s3")
    where = f"s3://{stack.bucket}/{DATASETS_PREFIX}{dataset}/"
    stale = stale_keys(s3, stack.bucket, dataset, plan)
    if stale:
        _confirm_removal(stale, dataset, where, args)
        remove_keys(s3, stack.bucket, stale)
    with progress.bytes_bar(f"Uploading {dataset}", plan.total_bytes) as advance:
        keys = upload_dataset(s3, stack.bucket, folder, dataset, plan, args.start, advance)
    if active is not None and not active.settling:
        then = (
            f"run {active.run_id} of {dataset} is in progress and does not train them: when it ends, one "
            "follow-up run validates and trains the dataset as it is then (none if you cancel it)"
        )
    else:
        then = (
            "the run starts now"
            if args.start
            else "the run starts once the upload has been quiet for a while"
        )
    sys.stdout.write(
        f"Uploaded {len(keys)} files to {where}; {then}. Follow it with `lora-pipeline status {dataset}`.\n"
    )
    return EXIT_OK


def _confirm_removal(stale: list[str], dataset: str, where: str, args: argparse.Namespace) -> None:
    """List the files the upload removes from S3; go on with --yes or a "y" typed at a terminal."""
    sys.stderr.write(f"{_count(len(stale), 'file')} in {where} are not in {args.path} and will be removed:\n")
    sys.stderr.writelines(f"  {key.removeprefix(dataset_prefix(dataset))}\n" for key in stale)
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(
            "Not uploaded: the upload replaces the dataset in S3 and would remove the files above. "
            "Pass --yes to remove them (there is no terminal to ask), or upload under another --dataset name."
        )
    try:
        answer = input("Remove them and upload? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise UsageError("Not uploaded: nothing in S3 was changed.")


def _count(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _status(args: argparse.Namespace) -> int:
    stack = _stack(args)
    prices = load_instance_table(args.prices)
    found = runs.list_runs(stack, args.dataset)[: args.limit]
    sys.stdout.write(render_status([runs.run_status(stack, run, prices) for run in found]))
    if not args.local:  # a local stack sends no email at all: nothing to warn about
        for warning in runs.notification_warnings(stack):
            sys.stderr.write(f"warning: {warning}\n")
    return EXIT_OK


def _logs(args: argparse.Namespace) -> int:
    stack = _stack(args)
    run = runs.find_run(stack, args.run)
    if run.status == runs.REJECTED:
        sys.stdout.write(runs.rejection_summary(stack, run) + "\n")
        return EXIT_OK
    for line in runs.follow_logs(stack, run, follow=args.follow):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    return EXIT_OK


def _download(args: argparse.Namespace) -> int:
    stack = _stack(args)
    run = runs.find_run(stack, args.run, succeeded_only=True)
    target = Path(args.output or Path("out") / run.dataset)
    everything = args.all
    model, manifest = runs.download_model(
        stack, run, target, epochs=args.epochs or everything, samples=args.samples or everything
    )
    sys.stdout.write(f"{model} ({manifest.size_bytes:,} bytes, sha256 {manifest.sha256[:12]}…, verified)\n")
    if args.epochs or everything:
        sys.stdout.write(f"{len(manifest.epochs)} per-epoch LoRA(s) in {target / 'epochs'} (verified)\n")
    if args.samples or everything:
        sys.stdout.write(f"{len(manifest.samples)} sample image(s) in {target / 'samples'}\n")
    if everything:
        sys.stdout.write(f"{runs.download_report(stack, run, target)}\n")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    stack = _stack(args)
    run = runs.find_run(stack, args.run, succeeded_only=True)
    path = runs.download_report(stack, run, Path(args.output or Path("out") / run.dataset))
    sys.stdout.write(f"{path} (open it in a browser; it needs nothing else)\n")
    return EXIT_OK


def _cancel(args: argparse.Namespace) -> int:
    stack = _stack(args)
    run = runs.find_run(stack, args.run)
    runs.cancel_run(stack, run)
    sys.stdout.write(
        f"Cancelling {run.dataset}/{run.run_id}: the training job is stopped and you get an email.\n"
    )
    return EXIT_OK


def _retrain(args: argparse.Namespace) -> int:
    stack = _stack(args)
    if not args.local:
        require_training_image(stack)
    runs.retrain(stack, args.dataset)
    sys.stdout.write(
        f"Started a new run of {args.dataset}. Follow it with `lora-pipeline status {args.dataset}`.\n"
    )
    return EXIT_OK


def _resume(args: argparse.Namespace) -> int:
    stack = _stack(args)
    if not args.local:
        require_training_image(stack)
    earlier = runs.resume(stack, args.dataset)
    sys.stdout.write(
        f"Started a new run of {args.dataset} that continues from the checkpoints of run {earlier.run_id} "
        f"({earlier.status.lower()}). Follow it with `lora-pipeline status {args.dataset}`.\n"
    )
    return EXIT_OK


def _example(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    if target.exists() and any(target.iterdir()):
        raise UsageError(f"{target} is not empty; choose a new folder for the example dataset.")
    writer = write_broken_dataset if args.name == "broken" else write_example_dataset
    writer(target)
    sys.stdout.write(f"Wrote the {args.name!r} example dataset to {target}\n")
    return EXIT_OK


def _local(args: argparse.Namespace) -> int:
    if (problem := local.missing_setup()) is not None:
        raise UsageError(problem)
    if args.base_model is not None and not args.base_model.is_file():
        raise UsageError(f"{args.base_model} is not a file: pass an SDXL base model .safetensors.")
    if args.sd_scripts is not None and not (args.sd_scripts / "sdxl_train_network.py").is_file():
        raise UsageError(
            f"{args.sd_scripts} has no sdxl_train_network.py: pass an sd-scripts v0.10.1 checkout."
        )
    local.serve(args.port, args.quiet_period, args.sd_scripts, args.base_model, args.access_log)
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    try:
        accepted, lines = inspect_path(
            Path(args.path), Architecture.for_trainer(args.trainer), args.output_name
        )
    except InspectUsageError as exc:
        raise UsageError(str(exc)) from exc
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK if accepted else EXIT_REJECTED


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    target = common.add_argument_group("which stack")
    target.add_argument("--stack", help="stack name (default: $LORA_PIPELINE_STACK or samconfig.toml)")
    target.add_argument("--region", help="AWS region (default: your AWS configuration)")
    target.add_argument(
        "--local", action="store_true", help="use the embedded stack of `lora-pipeline local`"
    )
    target.add_argument("--prices", type=Path, help="instance price table (TOML) instead of the packaged one")

    parser = argparse.ArgumentParser(
        prog="lora-pipeline",
        description="Train SDXL LoRAs from a dataset folder, on AWS or on the embedded AWS.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {importlib.metadata.version(DISTRIBUTION)}"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(
        name: str, handler: object, help: str, description: str | None = None
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help, description=description or help)
        sub.set_defaults(handler=handler)
        return sub

    validate = command(
        "validate",
        _validate,
        "pre-flight check of a dataset: what Kohya would do with it, what is wrong, what it will cost",
        "With --stack or --local the stack's limits apply (instance types, volume, runtime), else the defaults. "
        "Exit code 0: trainable; 1: rejected (errors listed with their fixes); 2: usage error.",
    )
    validate.add_argument("path", help="dataset folder, a .zip of it, or s3://<bucket>/datasets/<name>/")
    validate.add_argument("--dataset", help="dataset name (default: the folder name)")
    for sub in (
        validate,
        upload := command(
            "upload",
            _upload,
            "validate, then upload a dataset folder: S3 then holds exactly the folder (like aws s3 sync --delete)",
        ),
    ):
        sub.add_argument(
            "--json", action="store_true", help="print the full report as JSON (validation.json)"
        )
        sub.add_argument(
            "--all", action="store_true", help="list every problem, not the first 10 of each kind"
        )
    upload.add_argument("path", help="the dataset folder, or a .zip of it")
    upload.add_argument("--dataset", help="dataset name in S3 (default: the folder name)")
    upload.add_argument("--start", action="store_true", help="write _READY: start now, no quiet period")
    upload.add_argument(
        "--force", action="store_true", help="upload even when validation rejects the dataset"
    )
    upload.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="remove the files in S3 that the folder no longer has without asking (the upload replaces the dataset)",
    )

    status = command("status", _status, "runs with their state, stage, progress, ETA and cost so far")
    status.add_argument("dataset", nargs="?", help="only this dataset's runs")
    status.add_argument("--limit", type=int, default=20, help="at most this many runs (newest first)")
    logs = command("logs", _logs, "print a run's training log")
    logs.add_argument("run", help="<dataset>/<run-id>, a run id, or a dataset (its newest run)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    download = command("download", _download, "fetch a run's LoRA and manifest (sha256 checked)")
    download.add_argument("run", help="a dataset (its newest successful run), <dataset>/<run-id> or a run id")
    download.add_argument("-o", "--output", help="folder to write to (default: out/<dataset>)")
    download.add_argument("--epochs", action="store_true", help="also the per-epoch LoRAs (into epochs/)")
    download.add_argument("--samples", action="store_true", help="also the sample images (into samples/)")
    download.add_argument("--all", action="store_true", help="the epochs, the samples and report.html too")
    report = command("report", _report, "save a run's report.html (loss curve, samples, cost)")
    report.add_argument("run", help="a dataset (its newest successful run), <dataset>/<run-id> or a run id")
    report.add_argument("-o", "--output", help="folder to write to (default: out/<dataset>)")
    cancel = command(
        "cancel", _cancel, "stop a run: its training job stops, its slot is freed, you get an email"
    )
    cancel.add_argument("run", help="<dataset>/<run-id>, a run id, or a dataset (its newest run)")
    retrain = command("retrain", _retrain, "start a new run of a dataset already in S3")
    retrain.add_argument("dataset")
    resume = command(
        "resume",
        _resume,
        "continue a stopped, cancelled or failed run from its kept checkpoints instead of from step 0",
    )
    resume.add_argument("dataset")

    inspect = commands.add_parser(
        "inspect",
        help="check a LoRA (.safetensors) or a model.tar.gz exactly as the unpack step does",
        description="Modules per part, rank, alpha, dtype, metadata, trigger words and every problem found. "
        "Exit code 0: valid; 1: rejected; 2: usage error.",
    )
    inspect.add_argument("path", help="a .safetensors file, or a model.tar.gz as SageMaker writes it")
    inspect.add_argument(
        "--trainer",
        choices=["kohya", "smoke"],
        default="kohya",
        help="what trained it (smoke: the tiny test model, whose layer widths are not SDXL's)",
    )
    inspect.add_argument(
        "--output-name", help="in an archive, the LoRA to pick: <output-name>.safetensors (as the run does)"
    )
    inspect.set_defaults(handler=_inspect)
    example = commands.add_parser(
        "example", help="write a bundled example dataset (drawn procedurally) to a folder"
    )
    example.add_argument(
        "name", choices=["bluebot", "broken"], help="bluebot trains; broken shows a rejection"
    )
    example.add_argument("dir", help="folder to create")
    example.set_defaults(handler=_example)
    serve = commands.add_parser(
        "local", help="run the whole stack on the embedded AWS until Ctrl-C (for --local)"
    )
    serve.add_argument("--port", type=int, default=local.DEFAULT_PORT)
    serve.add_argument(
        "--quiet-period", type=int, default=10, help="QuietPeriodSeconds of the embedded stack"
    )
    serve.add_argument(
        "--sd-scripts", type=Path, help="an sd-scripts checkout: run real Kohya, not the smoke trainer"
    )
    serve.add_argument("--base-model", type=Path, help="a local SDXL base .safetensors for real Kohya runs")
    serve.add_argument(
        "--access-log", action="store_true", help="print every HTTP request the embedded server answers"
    )
    serve.set_defaults(handler=_local)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except (UsageError, StackError) as exc:
        sys.stderr.write(f"lora-pipeline: {exc}\n")
        return EXIT_USAGE
    except botocore.exceptions.NoCredentialsError:
        sys.stderr.write(
            "lora-pipeline: no AWS credentials found: run `aws configure` (or `aws sso login`).\n"
        )
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
