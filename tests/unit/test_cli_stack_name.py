from pathlib import Path

import pytest

from lora_pipeline_cli.stack import STACK_ENV_VAR, StackError, stack_name_from


def test_explicit_name_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STACK_ENV_VAR, "from-env")
    assert stack_name_from("given", tmp_path / "samconfig.toml") == "given"
    assert stack_name_from(None, tmp_path / "samconfig.toml") == "from-env"


def test_samconfig_deploy_then_global(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STACK_ENV_VAR, raising=False)
    config = tmp_path / "samconfig.toml"
    config.write_text('version = 0.1\n[default.global.parameters]\nstack_name = "global-name"\n')
    assert stack_name_from(None, config) == "global-name"
    config.write_text(config.read_text() + '[default.deploy.parameters]\nstack_name = "deploy-name"\n')
    assert stack_name_from(None, config) == "deploy-name"


def test_repo_samconfig_names_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STACK_ENV_VAR, raising=False)
    assert (
        stack_name_from(None, Path(__file__).resolve().parents[2] / "samconfig.toml") == "sdxl-lora-pipeline"
    )


def test_no_stack_anywhere_says_how_to_name_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STACK_ENV_VAR, raising=False)
    with pytest.raises(StackError, match="--stack"):
        stack_name_from(None, tmp_path / "missing.toml")
