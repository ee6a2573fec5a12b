"""The README's promises that code can check: the two set-up commands, the generated sections, the layout."""

import re
from pathlib import Path

from lora_pipeline_cli import docs

README = Path(docs.README).read_text(encoding="utf-8")


def test_two_setup_commands_at_the_top() -> None:
    top = README.split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in top.splitlines() if line.startswith("make ")]
    assert commands == ["make demo", "make test"]


def test_generated_sections_are_current() -> None:
    for name in ("troubleshooting", "cost-example", "config-rules"):
        assert docs.section(README, name) == docs.generated(name), (
            f"run python -m lora_pipeline_cli.docs ({name})"
        )


def test_every_problem_code_is_documented() -> None:
    table = docs.section(README, "troubleshooting") or ""
    for code in docs.catalogue():
        assert f"`{code}`" in table


def test_every_event_type_is_in_the_events_reference() -> None:
    from lora_pipeline.events import EVENT_MODELS

    events = README.split("## Events", 1)[1].split("\n## ", 1)[0]
    for model in EVENT_MODELS:
        assert f"`{model.DETAIL_TYPE}`" in events


def test_every_file_the_layout_table_names_exists() -> None:
    root = Path(docs.README).parent
    package = root / "layers" / "common" / "lora_pipeline"
    table = README.split("| folder | what lives there |", 1)[1].split("\n\n", 1)[0]
    for row in table.splitlines()[2:]:
        folder, files = (cell.strip().strip("`") for cell in row.split("|")[1:3])
        for name in re.findall(r"`([\w/.-]+\.py)`", files):
            places = [root / name, root / folder / name, package / name, *(root / folder).glob(f"*/{name}")]
            assert any(place.is_file() for place in places), f"README's layout table names a missing {name}"
