"""The validator's summary and plan against what real sd-scripts v0.10.1 computes for the same dataset.

sd-scripts runs in `.venv-kohya` on the exact command line the training container builds from the
validator's kohya.toml (conftest.py); every expected value here is sd-scripts' own output, never a number
written in this file.
"""

from __future__ import annotations

import csv
from importlib import resources
from typing import Any

import pytest

from lora_pipeline.kohya_args import ArgKind, argument_specs
from lora_pipeline.kohya_contract import PIPELINE_DECIDED_KEYS
from lora_pipeline.problems import Severity
from tests.differential.cases import CASES
from tests.differential.conftest import CaseRun, ProbeRun

CASE_IDS = [case.id for case in CASES]
TABLE_COLUMNS = ("name", "type", "default", "choices", "defined_in")


@pytest.fixture(params=CASE_IDS)
def run(request: pytest.FixtureRequest, probe_run: ProbeRun) -> CaseRun:
    return probe_run.cases[request.param]


def _trained(run: CaseRun) -> dict[str, Any]:
    """The probe's result for a case sd-scripts trains (the validator may still refuse it: it is stricter on
    purpose, e.g. about a .Jpg extension sd-scripts silently skips; its summary and plan must still be right)."""
    if run.sd_scripts["error"] is not None:
        pytest.skip(f"sd-scripts stops on this dataset ({run.sd_scripts['error']}); see test_refused")
    return run.sd_scripts


def test_refused(run: CaseRun) -> None:
    """A dataset sd-scripts stops on has an error in the report."""
    error = run.sd_scripts["error"]
    if error is not None:
        assert not run.report.trainable, (
            f"sd-scripts stops with {error!r}, but the validator passes the dataset"
        )


# Errors the validator raises on purpose for datasets sd-scripts trains without a word, each because the run
# would silently train something other than what the user prepared.
DELIBERATE_REFUSALS = {
    "IMAGE_EXTENSION_CASE": "glob_images skips a .Jpg image silently",
    "CAPTION_WRONG_EXTENSION": "read_caption never opens the .txt caption; the image trains with the class tokens",
    "CAPTION_EMPTY": "a blank first line trains the image with an empty caption",
}


def test_refusals_are_deliberate(run: CaseRun) -> None:
    """When sd-scripts trains a dataset, every error the validator reports is one of its deliberate refusals,
    never a claim that sd-scripts would fail."""
    if run.sd_scripts["error"] is not None:
        return
    errors = {p.code: p.message for p in run.report.problems if p.severity is Severity.ERROR}
    unexpected = {code: message for code, message in errors.items() if code not in DELIBERATE_REFUSALS}
    assert not unexpected, "sd-scripts trains this dataset"


def test_subsets(run: CaseRun) -> None:
    """The subsets sd-scripts keeps (config_util.generate_dreambooth_subsets_config_by_subdirs, then
    DreamBoothDataset drops those without images): folder, repeats, class tokens."""
    expected = [(s["folder"], s["repeats"], s["class_tokens"]) for s in _trained(run)["subsets"]]
    summary = [(s.folder, s.repeats, s.class_tokens) for s in run.report.summary.subsets if s.image_count]
    assert sorted(summary) == expected
    assert run.report.plan is not None
    planned = [(s.folder, s.repeats) for s in run.report.plan.subsets if s.images]
    assert sorted(planned) == [(folder, repeats) for folder, repeats, _ in expected]


def test_images_and_captions(run: CaseRun) -> None:
    """Every image sd-scripts trains, with the caption it trains it with (DreamBoothDataset.read_caption)."""
    expected = {
        s["folder"]: [(i["file"], i["caption"]) for i in s["images"]] for s in _trained(run)["subsets"]
    }
    summary = {
        s.folder: [(i.file, i.caption) for i in s.images] for s in run.report.summary.subsets if s.image_count
    }
    assert summary == expected


def test_image_counts(run: CaseRun) -> None:
    """Images x repeats: sd-scripts' num_train_images."""
    sd_scripts = _trained(run)
    expected_images = sum(len(s["images"]) for s in sd_scripts["subsets"])
    assert run.report.plan is not None
    assert run.report.summary.total_images == expected_images
    assert run.report.plan.images == expected_images
    assert run.report.summary.total_repeated_images == sd_scripts["num_train_images"]
    assert run.report.plan.samples_per_epoch == sd_scripts["num_train_images"]


def test_buckets(run: CaseRun) -> None:
    """Aspect-ratio buckets and the samples in each (BaseDataset.make_buckets)."""
    expected = [(*b["resolution"], b["count"]) for b in _trained(run)["buckets"]]
    summary = sorted((b.width, b.height, b.image_count) for b in run.report.summary.buckets)
    assert summary == expected


def test_steps(run: CaseRun) -> None:
    """Steps per epoch, total steps and epochs (train_network.NetworkTrainer.train's step arithmetic over
    len(train_dataloader), one batch per bucket batch)."""
    sd_scripts = _trained(run)
    plan = run.report.plan
    assert plan is not None
    planned = {
        "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": plan.total_steps,
        "epochs": plan.epochs,
    }
    expected = {key: sd_scripts[key] for key in planned}
    assert planned == expected, f"sd-scripts has {sd_scripts['batches_per_epoch']} batches per epoch"


# --- the effective kohya.toml as sd-scripts' parser reads it ---------------------------------------------------


def _intended(kind: ArgKind, name: str, described: dict[str, Any]) -> bool:
    python_type, item_types = described["type"], described.get("item_types", [])
    if kind in (ArgKind.STR, ArgKind.PATH):
        return python_type == "str"
    if kind is ArgKind.FLAG:
        return python_type == "bool"
    if kind is ArgKind.INT:
        return python_type == "int"
    if kind is ArgKind.FLOAT:
        return python_type == "float"
    if kind is ArgKind.INT_OR_FLOAT:
        return python_type in ("int", "float")
    if kind is ArgKind.STR_LIST:
        return python_type == "list" and all(t == "str" for t in item_types)
    # train_network.py takes a single number for text_encoder_lr ("toml backward compatibility").
    if name == "text_encoder_lr" and python_type == "float":
        return True
    return python_type == "list" and all(t == "float" for t in item_types)


def test_config_read_with_intended_types(run: CaseRun) -> None:
    """Every key of the effective kohya.toml is an argument sd-scripts knows, reaches it with the value written
    (unless the container sets it on the command line) and has the type argparse would give it."""
    if run.report.effective_config is None or "args" not in run.sd_scripts:
        pytest.fail(f"no parsed arguments: {run.sd_scripts['error']}")
    parsed = run.sd_scripts["args"]
    specs = argument_specs()
    wrong = {}
    for key, value in run.report.effective_config.items():
        assert key in specs and key in parsed, f"{key} is not an argument of sdxl_train_network.py"
        described = parsed[key]
        if key not in PIPELINE_DECIDED_KEYS and described["value"] != value:
            wrong[key] = f"written {value!r}, sd-scripts reads {described['value']!r}"
        elif not _intended(specs[key].kind, key, described):
            wrong[key] = f"{described['type']} {described['value']!r}, but the argument is {specs[key].kind}"
    assert not wrong


def test_parser_reads_command_line_paths(run: CaseRun) -> None:
    """The container's own arguments win over the config file (read_config_from_file parses the command
    line on top of it), so the data sd-scripts trains on is the folder that was validated."""
    parsed = run.sd_scripts.get("args") or pytest.fail(f"no parsed arguments: {run.sd_scripts['error']}")
    assert parsed["train_data_dir"]["value"].endswith(f"/{run.case.id}/dataset")
    assert parsed["output_name"]["value"] == run.report.job.output_name


def test_args_table_matches_sd_scripts(probe_run: ProbeRun) -> None:
    """The committed argument table is what generate_args_table.py gets from sd-scripts' setup_parser().

    Only the columns read from sd-scripts are compared; columns the product adds to the table are its own.
    To regenerate: `.venv-kohya/bin/python tests/differential/generate_args_table.py build/sd-scripts`."""
    text = resources.files("lora_pipeline").joinpath("data", "sdxl_train_network_args.tsv").read_text("utf-8")
    committed = [
        {column: row[column] for column in TABLE_COLUMNS}
        for row in csv.DictReader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    ]
    assert committed == probe_run.args_table
