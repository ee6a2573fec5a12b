"""Every rule for a name the pipeline accepts or makes: dataset folders, LoRA file names, Hugging Face model ids,
and the names of Step Functions executions and SageMaker training jobs built from a dataset's name.
"""

from __future__ import annotations

import re

# A dataset folder's name, as the CLI uploads it: the S3 keys, the run table and the job names carry it without
# escaping, and a leading '.', '_' or '-' would read as a hidden file, a private name or an option.
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

OUTPUT_NAME_MAX = 100
# `output_name`, in pipeline.toml or config.toml. sd-scripts (library/train_util.py get_last_ckpt_name,
# get_epoch_ckpt_name, get_step_ckpt_name, EPOCH_STATE_NAME, STEP_STATE_NAME) joins it into
# `<output_name>.safetensors`, `<output_name>-<NNNNNN>.safetensors` and `<output_name>-step<NNNNNNNN>-state` under
# output_dir without any check; the pipeline also makes it an S3 key and a command-line value (`--output_name
# <name>`). So: no path separator, no space, no leading '.' (hidden) or '-' (argparse would read an option), and
# short enough that the longest of those names stays far below the 255 bytes a file name may have.
OUTPUT_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{OUTPUT_NAME_MAX - 1}}}")
_NOT_OUTPUT_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")

# A Hugging Face model id `<owner>/<name>` (huggingface_hub's `validate_repo_id`, narrowed to one owner).
HUGGING_FACE_MODEL_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

# Step Functions execution names (1 to 80 characters; no whitespace, brackets, wildcards or punctuation) and
# SageMaker training job names (botocore's sagemaker model, TrainingJobName: `[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}`):
# built from the dataset name with every run of other characters as one hyphen.
_NOT_JOB_NAME_CHARS = re.compile(r"[^a-zA-Z0-9]+")


def is_output_name(name: str) -> bool:
    """Whether `name` is usable as `output_name` as written (see OUTPUT_NAME)."""
    return OUTPUT_NAME.fullmatch(name) is not None


def safe_output_name(name: str) -> str:
    """`name` reduced to [A-Za-z0-9_-]: other runs of characters become one `_`, no leading or trailing `_`/`-`,
    at most OUTPUT_NAME_MAX characters; never empty ("lora"). The result passes `is_output_name`."""
    cleaned = _NOT_OUTPUT_NAME_CHARS.sub("_", name).strip("_-")[:OUTPUT_NAME_MAX].rstrip("_-")
    return cleaned or "lora"


def is_hugging_face_model_id(value: str) -> bool:
    return HUGGING_FACE_MODEL_ID.fullmatch(value) is not None


def name_slug(dataset: str, max_len: int) -> str:
    """The dataset name reduced to [a-zA-Z0-9-], no leading/trailing/double hyphen, at most `max_len`; never
    empty ("dataset"). It fits both a Step Functions execution name and a SageMaker training job name."""
    slug = _NOT_JOB_NAME_CHARS.sub("-", dataset).strip("-")[:max_len].strip("-")
    return slug or "dataset"
