"""Every network module the validator allows round-trips: what it saves is accepted by the output check.

networks/lora.py and networks/lora_fa.py save `<module>.lora_down.weight`, `.lora_up.weight` and `.alpha`;
networks/dylora.py (DyLoRAModule.state_dict) joins its per-rank lora_A / lora_B lists into the same keys.
networks/oft.py saves `oft_*` modules with `.oft_blocks`, which the output check refuses: it is refused at
validation instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lora_pipeline.kohya_facts import ALLOWED_NETWORK_MODULES, NETWORK_MODULES_REFUSED
from lora_pipeline.safetensors_lora import LoraFormatError, inspect_lora_file
from tests.lora_files import kohya_metadata, lora_tensors, safetensors_bytes


def saved_lora(tmp_path: Path, module: str) -> Path:
    path = tmp_path / "out.safetensors"
    metadata = {**kohya_metadata(rank=1), "ss_network_module": module}
    path.write_bytes(safetensors_bytes(lora_tensors(rank=1), metadata))
    return path


@pytest.mark.parametrize("module", ALLOWED_NETWORK_MODULES)
def test_the_output_of_every_allowed_module_passes_the_output_check(tmp_path: Path, module: str) -> None:
    _, summary = inspect_lora_file(saved_lora(tmp_path, module))
    assert summary.network_module == module
    assert (summary.unet_modules, summary.text_encoder_modules) == (722, 264)


def test_oft_output_is_refused_by_the_output_check_which_is_why_validation_refuses_oft(
    tmp_path: Path,
) -> None:
    assert "networks.oft" in NETWORK_MODULES_REFUSED
    name = "oft_unet_middle_block_1_transformer_blocks_0_attn1_to_q"
    tensors = {
        f"{name}.oft_blocks": np.zeros((4, 320, 320), dtype=np.float16),
        f"{name}.alpha": np.array(1.0, dtype=np.float16),
    }
    path = tmp_path / "oft.safetensors"
    path.write_bytes(safetensors_bytes(tensors, {**kohya_metadata(), "ss_network_module": "networks.oft"}))
    with pytest.raises(LoraFormatError):
        inspect_lora_file(path)
