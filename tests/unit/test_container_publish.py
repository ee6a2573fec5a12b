"""What the entrypoint puts next to the final LoRA in /opt/ml/model (tarred into model.tar.gz)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_pipeline.job_settings import DEFAULT_KEEP_EPOCH_LORAS
from lora_trainer.entrypoint import publish_extras
from lora_trainer.sagemaker_env import ContractError, OptMl, read_hyperparameters


def _checkpoints(root: Path, epochs: list[int]) -> OptMl:
    opt_ml = OptMl(root)
    opt_ml.checkpoints_dir.mkdir(parents=True)
    opt_ml.model_dir.mkdir(parents=True)
    for epoch in epochs:
        # sd-scripts' train_util.get_epoch_ckpt_name; the final epoch is <output_name>.safetensors itself.
        (opt_ml.checkpoints_dir / f"bluebot-{epoch:06d}.safetensors").write_bytes(b"epoch %d" % epoch)
    (opt_ml.checkpoints_dir / "bluebot.safetensors").write_bytes(b"final")
    (opt_ml.checkpoints_dir / "bluebot-step00000100.safetensors").write_bytes(b"a step save, not an epoch")
    (opt_ml.checkpoints_dir / "other-000001.safetensors").write_bytes(b"another output name")
    return opt_ml


@pytest.mark.parametrize(
    ("epochs", "keep", "published"),
    [
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 3, [9, 10, 11]),  # by epoch number, not by name length
        ([1, 2], 3, [1, 2]),
        ([1, 2, 3], 0, []),
    ],
)
def test_the_newest_epoch_loras_are_published(
    tmp_path: Path, epochs: list[int], keep: int, published: list[int]
) -> None:
    opt_ml = _checkpoints(tmp_path, epochs)
    (opt_ml.model_dir / "epochs").mkdir()
    (opt_ml.model_dir / "epochs" / "bluebot-000099.safetensors").write_bytes(b"from an earlier attempt")

    publish_extras(opt_ml, "bluebot", keep)

    epochs_dir = opt_ml.model_dir / "epochs"
    found = sorted(p.name for p in epochs_dir.iterdir()) if epochs_dir.exists() else []
    assert found == [f"bluebot-{epoch:06d}.safetensors" for epoch in published]


def test_samples_are_published_with_the_lora(tmp_path: Path) -> None:
    opt_ml = _checkpoints(tmp_path, [])
    (opt_ml.checkpoints_dir / "sample").mkdir()
    (opt_ml.checkpoints_dir / "sample" / "bluebot_e000001_00_20261130120000.png").write_bytes(b"png")

    assert publish_extras(opt_ml, "bluebot", 3) == ["1 sample image(s)"]
    assert [p.name for p in opt_ml.samples_dir.iterdir()] == ["bluebot_e000001_00_20261130120000.png"]
    assert opt_ml.samples_dir == opt_ml.model_dir / "samples"


def test_hyperparameters_carry_the_trigger_phrase_and_the_epochs_to_keep(tmp_path: Path) -> None:
    path = tmp_path / "hyperparameters.json"
    base = {"output_name": "bluebot", "dataset": "bluebot", "run_id": "r"}
    path.write_text(json.dumps(base))
    defaults = read_hyperparameters(path)
    assert (defaults.trigger_phrase, defaults.keep_epoch_loras) == (None, DEFAULT_KEEP_EPOCH_LORAS)
    path.write_text(json.dumps({**base, "trigger_phrase": "bluebot, night", "keep_epoch_loras": "0"}))
    given = read_hyperparameters(path)
    assert (given.trigger_phrase, given.keep_epoch_loras) == ("bluebot, night", 0)
    path.write_text(json.dumps({**base, "keep_epoch_loras": "-1"}))
    with pytest.raises(ContractError, match="keep_epoch_loras"):
        read_hyperparameters(path)
