"""Sample prompt lines read as sd-scripts' library/train_util.py:line_to_prompt_dict reads them."""

from __future__ import annotations

import pytest

from lora_pipeline.instances import load_instance_table
from lora_pipeline.job_settings import StackLimits, read_job_settings
from lora_pipeline.sample_prompts import read_prompt_line


def test_options_match_case_insensitively_as_re_ignorecase_does() -> None:
    line = read_prompt_line("zkq dog on a beach --W 832 --H 1216 --D 7 --L 6.5 --S 30 --N blurry")
    assert line.prompt == "zkq dog on a beach"
    assert line.options == {
        "width": 832,
        "height": 1216,
        "seed": 7,
        "scale": 6.5,
        "sample_steps": 30,
        "negative_prompt": "blurry",
    }
    assert line.ignored == [] and line.unknown_sampler is None


@pytest.mark.parametrize(
    ("line", "ignored"),
    [
        ("dog --steps 20", "--steps"),  # no pattern matches "steps 20"
        ("dog --w big", "--w big"),  # `w (\d+)` needs digits
        ("dog --l 1.2.3", "not a number"),  # `l ([\d\.]+)` matches, float() fails: logged and skipped
        ("dog --cn control.png", "does not use it"),  # ControlNet only
    ],
)
def test_options_sd_scripts_would_ignore_are_named(line: str, ignored: str) -> None:
    [reason] = read_prompt_line(line).ignored
    assert ignored in reason


@pytest.mark.parametrize(("sampler", "known"), [("euler_a", True), ("k_dpm_2_a", True), ("Euler_a", False)])
def test_sampler_names_are_compared_as_get_my_scheduler_does(sampler: str, known: bool) -> None:
    line = read_prompt_line(f"dog --ss {sampler}")
    assert (line.unknown_sampler is None) is known


LIMITS = StackLimits()


def read(prompt: str):
    return read_job_settings(
        f"sample_prompts = [{prompt!r}]\n".replace("'", '"'), LIMITS, load_instance_table()
    )


def test_upper_case_size_options_are_valid_and_kept_in_the_prompt_file() -> None:
    job, problems = read("zkq dog on a beach --W 832 --H 1216")
    assert problems == []
    assert job.prompts_txt() == "zkq dog on a beach --W 832 --H 1216\n"


def test_an_unknown_sampler_is_a_warning_and_the_prompt_file_is_still_written() -> None:
    job, problems = read("dog --ss dpm++ --steps 20")
    assert sorted(p.code for p in problems) == ["JOB_BAD_SAMPLE_PROMPT", "JOB_UNKNOWN_SAMPLER"]
    assert job.prompts_txt() == "dog --ss dpm++ --steps 20 --w 1024 --h 1024\n"
