"""`kohya_contract` against sd-scripts v0.10.1's own functions (contract_probe.py runs them in `.venv-kohya`).

Every expected value is sd-scripts' output for the same input; the inputs are the edge cases where a rule
written from memory would go wrong (a sign, leading zeros, non-ASCII digits, the repeats at the end, ...).
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from lora_pipeline.kohya_contract import (
    caption_extension,
    flatten_config,
    parse_resolution,
    parse_subset_folder,
)
from tests.differential.conftest import kohya_python, sd_scripts_dir

PROBE = Path(__file__).with_name("contract_probe.py")
PROBE_TIMEOUT_SECONDS = 600

FOLDERS = [
    "10_bluebot",
    "+5_x",
    "05_x",
    "x_5",
    "5",
    "5_",
    "5__x",
    "5_a_b",
    "0_x",
    "-1_x",
    " 3_a b",
    "１０_x",
    "1.5_x",
    "1e3_x",
    "10 x",
    "_x",
    ".ipynb_checkpoints",
]
RESOLUTIONS = [
    "1024",
    "1024,768",
    " 896 , 1152",
    "+1024",
    "1024x1024",
    "1024,768,512",
    "",
    "big",
    "0",
    "0,512",
]
CAPTION_CONFIGS: list[dict[str, str]] = [
    {},
    {"caption_extension": ".txt"},
    {"caption_extension": "txt"},
    {"caption_extension": ".caption.txt"},
    {"caption_extension": ".caption", "caption_extention": ".txt"},
    {"caption_extention": "txt"},
]
CONFIG_TOML = """
seed = 1
[model]
network_dim = 8
output_name = "first"
[training]
output_name = "second"
learning_rate = 1e-4
[deep]
inner = { a = 1 }
"""


@pytest.fixture(scope="module")
def sd_scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("contract-probe")
    request = {
        "sd_scripts": str(sd_scripts_dir()),
        "folders": FOLDERS,
        "resolutions": RESOLUTIONS,
        "caption_configs": CAPTION_CONFIGS,
        "config_toml": CONFIG_TOML,
    }
    (folder / "request.json").write_text(json.dumps(request))
    subprocess.run(
        [str(kohya_python()), str(PROBE), str(folder / "request.json"), str(folder / "result.json")],
        check=True,
        timeout=PROBE_TIMEOUT_SECONDS,
    )
    result: dict[str, Any] = json.loads((folder / "result.json").read_text())
    return result


@pytest.mark.parametrize("name", FOLDERS)
def test_subset_folder_names_parse_as_sd_scripts_parses_them(sd_scripts: dict[str, Any], name: str) -> None:
    parsed = parse_subset_folder(name)
    ours = [parsed.repeats, parsed.class_tokens] if parsed is not None and parsed.trains else None
    assert ours == sd_scripts["folders"][name]


@pytest.mark.parametrize("value", RESOLUTIONS)
def test_resolution_parses_as_sd_scripts_parses_it(sd_scripts: dict[str, Any], value: str) -> None:
    """Equal where sd-scripts gives a usable size; refused where it raises, and where it gives a size below 1
    (sd-scripts would fail later, building the buckets)."""
    theirs = sd_scripts["resolutions"][value]
    if theirs is not None and min(theirs) >= 1:
        assert list(parse_resolution(value)) == theirs
    else:
        with pytest.raises(ValueError, match="resolution"):
            parse_resolution(value)


def test_caption_extensions_are_the_ones_sd_scripts_reads(sd_scripts: dict[str, Any]) -> None:
    assert [caption_extension(config) for config in CAPTION_CONFIGS] == sd_scripts["caption_extensions"]


def test_the_config_file_flattens_as_sd_scripts_flattens_it(sd_scripts: dict[str, Any]) -> None:
    assert flatten_config(tomllib.loads(CONFIG_TOML)) == sd_scripts["flattened"]
