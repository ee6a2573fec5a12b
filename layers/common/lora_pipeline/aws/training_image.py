"""The training image a stack's jobs run: one exact image, `<repository>@sha256:<digest>`.

template.yaml's `TrainingImageParameter` (SSM, `/<stack>/training-image`) holds it: seeded from the stack's
`TrainingImageUri`, rewritten by `make image` (lora_image_build) after each push. The validate step reads it
once per run into the job spec, so a capacity retry or a resume of that run starts the same image even when a
new one is pushed meanwhile.
"""

from __future__ import annotations

import re
from typing import Any

# ECR's digest form; the template's TrainingImageUri AllowedPattern spells the same rule.
DIGEST_URI = re.compile(r"[^@\s]+@sha256:[0-9a-f]{64}")


class TrainingImageNotPinned(RuntimeError):
    """The parameter holds no `<repository>@sha256:<digest>`: no image was built or pinned yet."""


def is_digest_uri(uri: str) -> bool:
    return DIGEST_URI.fullmatch(uri) is not None


def pinned_training_image(ssm: Any, parameter_name: str) -> str:
    """The image URI in SSM parameter `parameter_name`; TrainingImageNotPinned when it is not a digest form."""
    value: str = ssm.get_parameter(Name=parameter_name)["Parameter"]["Value"]
    if not is_digest_uri(value):
        raise TrainingImageNotPinned(
            f"SSM parameter {parameter_name} holds {value!r}, not a training image pinned by digest "
            "(<repository>@sha256:<digest>). Build one with `make image STACK=<stack>`, or deploy the stack "
            "with TrainingImageUri=<repository>@sha256:<digest>; then upload the dataset again."
        )
    return value
