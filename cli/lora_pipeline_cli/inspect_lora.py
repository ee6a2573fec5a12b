"""`lora-pipeline inspect`: judge a LoRA file or a model.tar.gz exactly as the unpack step does, and show it.

A `.safetensors` file goes through `safetensors_lora.check_lora_stream`, an archive through
`model_archive.unpack_model_archive` (which runs the same check on the member it picks) with a sink that
keeps nothing, so a file passes here if and only if the pipeline's unpack step would accept it.
"""

from __future__ import annotations

import os
from pathlib import Path

from lora_pipeline.model_archive import DiscardSink, ModelArchiveError, unpack_model_archive
from lora_pipeline.safetensors_lora import (
    SMOKE_MODEL_NAME,
    Architecture,
    LoraSummary,
    check_lora_stream,
    trigger_words,
)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# Metadata values longer than this (tag frequencies, thumbnails) are shortened in the listing.
METADATA_VALUE_CHARS = 120


class InspectUsageError(ValueError):
    """The path is not something inspect can read."""


def inspect_path(path: Path, architecture: Architecture, output_name: str | None) -> tuple[bool, list[str]]:
    """(accepted, lines to print) for a `.safetensors` file or a model archive."""
    if not path.is_file():
        raise InspectUsageError(f"{path} is not a file. Pass a .safetensors file or a model.tar.gz.")
    name = path.name.lower()
    if name.endswith(".safetensors"):
        with open(path, "rb") as file:
            check = check_lora_stream(file, os.fstat(file.fileno()).st_size, architecture)
        return check.accepted, _render(
            str(path),
            check.summary,
            check.header.metadata if check.header else {},
            check.alphas,
            check.problems,
        )
    if name.endswith(ARCHIVE_SUFFIXES):
        try:
            with open(path, "rb") as file:
                result = unpack_model_archive(
                    file, DiscardSink(), output_name=output_name, architecture=architecture
                )
        except ModelArchiveError as error:
            lora = error.lora
            return False, _render(
                f"{path}!/{error.member}" if error.member else str(path),
                lora.summary if lora else None,
                lora.header.metadata if lora and lora.header else {},
                lora.alphas if lora else [],
                [str(error)],
            )
        return True, _render(f"{path}!/{result.member}", result.summary, result.metadata, result.alphas, [])
    raise InspectUsageError(f"{path} is neither a .safetensors file nor a .tar.gz/.tgz/.tar archive.")


def _render(
    where: str,
    summary: LoraSummary | None,
    metadata: dict[str, str],
    alphas: list[float],
    problems: list[str],
) -> list[str]:
    lines = [f"{where}: {'REJECTED' if problems else 'VALID SDXL LoRA'}"]
    if summary is not None:
        kinds = ", ".join(f"{kind} {count}" for kind, count in summary.module_types.items())
        lines += [
            f"  modules: U-Net {summary.unet_modules}, text encoder 1 {summary.te1_modules}, "
            f"text encoder 2 {summary.te2_modules} ({kinds})",
            f"  rank: {', '.join(map(str, summary.ranks)) or 'unknown'}; alpha: "
            f"{', '.join(f'{a:g}' for a in alphas) or 'unknown'} in the tensors, "
            f"{metadata.get('ss_network_alpha', 'not stated')} in the metadata",
            f"  dtype: {', '.join(summary.dtypes)}; {summary.tensor_count} tensors",
            f"  base model: {summary.base_model_version or 'not stated'}, "
            f"architecture {summary.architecture or 'not stated'}",
        ]
    words = trigger_words(metadata)
    lines.append(f"  trigger words: {', '.join(words) if words else 'none recorded in the metadata'}")
    if metadata:
        lines.append("  metadata:")
        for key, value in sorted(metadata.items()):
            shown = value if len(value) <= METADATA_VALUE_CHARS else value[:METADATA_VALUE_CHARS] + "..."
            lines.append(f"    {key} = {shown}")
    else:
        lines.append("  metadata: none")
    for warning in summary.warnings if summary else []:
        lines.append(f"  warning: {warning}")
    for problem in problems:
        lines.append(f"  problem: {problem}")
    if problems and metadata.get("ss_sd_model_name") == SMOKE_MODEL_NAME:
        lines.append(
            "  note: the smoke trainer wrote this file (tiny layers): inspect it with --trainer smoke"
        )
    return lines
