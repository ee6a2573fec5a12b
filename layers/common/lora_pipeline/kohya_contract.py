"""What sd-scripts v0.10.1's `sdxl_train_network.py` makes of a dataset folder and a `--config_file`, written once.

The validator (`dataset`, `kohya_config`, `kohya_rules`), the command builder (`lora_trainer.kohya_command`)
and the smoke trainer (`lora_trainer.smoke_dataset`) all read these rules from here. Each rule that mirrors
sd-scripts names the file and function it comes from; `tests/differential/test_kohya_contract.py` runs those
functions in `.venv-kohya` and compares.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from lora_pipeline.kohya_args import KeyPolicy, keys_with_policy

# The base model when neither pipeline.toml nor the stack names one.
SDXL_BASE_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"

# --- the dataset folder -----------------------------------------------------------------------------------------

# library/train_util.py IMAGE_EXTENSIONS (pillow-avif-plugin and JPEG XL readers, which extend it, are not
# installed); glob_images matches them case-sensitively.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".PNG", ".JPG", ".JPEG", ".WEBP", ".BMP")
# library/train_util.py add_dataset_arguments: the default of --caption_extension.
DEFAULT_CAPTION_EXTENSION = ".caption"
# library/train_util.py DreamBoothDataset.__init__ (read_caption): a name with this many `_`-separated parts or more
# (face-crop naming) also tries the name without its last four parts.
FACE_CROP_NAME_PARTS = 5
# A caption extension as the validator accepts it: a dot, then file-name characters.
_CAPTION_EXTENSION = re.compile(r"\.[A-Za-z0-9_.-]+")


class SubsetFolder(NamedTuple):
    """A direct sub-folder of train_data_dir, named `<repeats>_<class tokens>`."""

    repeats: int
    class_tokens: str

    @property
    def trains(self) -> bool:
        """config_util.generate_dreambooth_subsets_config_by_subdirs skips a folder with repeats < 1."""
        return self.repeats >= 1


def parse_subset_folder(name: str) -> SubsetFolder | None:
    """`name` as library/config_util.py:generate_dreambooth_subsets_config_by_subdirs (its
    `extract_dreambooth_params`) reads it: `int()` of the part before the first `_` is the repeats, the rest
    joined by `_` the class tokens. None when `int()` refuses the prefix (sd-scripts logs "ignore directory
    without repeats" and skips the folder). `int()` accepts surrounding whitespace, a sign, leading zeros and
    non-ASCII digits (" 10", "+5", "010", "１０"); underscores never reach it because of the split."""
    tokens = name.split("_")
    try:
        repeats = int(tokens[0])
    except ValueError:
        return None
    return SubsetFolder(repeats, "_".join(tokens[1:]))


def caption_extension(config: Mapping[str, Any]) -> str:
    """The caption extension sd-scripts uses for a flat config: the misspelt `caption_extention` wins
    (library/train_util.py:prepare_dataset_args), and a missing leading dot is added
    (library/train_util.py:DreamBoothSubset.__init__); the default is DEFAULT_CAPTION_EXTENSION."""
    extension = config.get("caption_extention")
    if extension is None:
        extension = config.get("caption_extension", DEFAULT_CAPTION_EXTENSION)
    return dotted_caption_extension(str(extension))


def dotted_caption_extension(extension: str) -> str:
    """library/train_util.py:DreamBoothSubset.__init__: a non-empty extension without a leading dot gets one."""
    return extension if not extension or extension.startswith(".") else "." + extension


def is_caption_extension(extension: str) -> bool:
    """Whether `extension` (dotted) names a file extension; sd-scripts appends it to the image's base name
    unchecked, so "/x" or "" would read other files."""
    return _CAPTION_EXTENSION.fullmatch(extension) is not None


def caption_candidates(image_path: str, extension: str) -> list[str]:
    """The caption paths sd-scripts tries for an image, in order (library/train_util.py:
    DreamBoothDataset.__init__, its `read_caption`): `<path without extension><extension>`, then, for face-crop names, the
    name without its last four `_`-separated parts.

    sd-scripts splits the absolute path; the validator passes the path relative to the dataset root, which
    gives the same answer because the training container's data directory has no `_` in it."""
    base = posixpath.splitext(image_path)[0]
    candidates = [base + extension]
    tokens = base.split("_")
    if len(tokens) >= FACE_CROP_NAME_PARTS:
        candidates.append("_".join(tokens[:-4]) + extension)
    return candidates


# --- the config file --------------------------------------------------------------------------------------------


def config_entries(document: Mapping[str, Any]) -> Iterator[tuple[str | None, str, Any]]:
    """`(table, key, value)` for every setting of a parsed `--config_file`, in file order, as
    library/train_util.py:read_config_from_file walks it: a top-level table's keys are lifted to the top level
    (table = its name), any other top-level value is kept as it is (table = None). Deeper tables are values."""
    for name, value in document.items():
        if isinstance(value, Mapping):
            for key, item in value.items():
                yield name, key, item
        else:
            yield None, name, value


def flatten_config(document: Mapping[str, Any]) -> dict[str, Any]:
    """The settings sd-scripts reads from a parsed `--config_file` (read_config_from_file): tables flattened one
    level; a key set twice keeps its last value."""
    return {key: value for _, key, value in config_entries(document)}


def parse_resolution(value: object) -> tuple[int, int]:
    """`resolution` ("W,H" or "S") as library/train_util.py:prepare_dataset_args reads it: `int()` of each
    comma-separated part ("+1024" and " 896 " are numbers), one part meaning a square. Raises ValueError
    (its message names `resolution`) for anything else: a non-string (sd-scripts' argument is a string), not
    one or two parts, or a size below 1 (sd-scripts would fail later, building the buckets)."""
    if not isinstance(value, str):
        raise ValueError(f"resolution {value!r} is not a string 'size' or 'width,height'")
    try:
        parts = [int(part) for part in value.split(",")]
    except ValueError:
        raise ValueError(f"resolution {value!r} is not 'size' or 'width,height'") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ValueError(f"resolution {value!r} is not 'size' or 'width,height' with positive numbers")
    return parts[0], parts[1]


# --- the keys the pipeline owns ---------------------------------------------------------------------------------

# The argument table's `owned` keys (kohya_args): the training container sets them on the command line, which
# sd-scripts reads after the config file (read_config_from_file parses the command line into the config's
# namespace), so a value in config.toml could only mislead. The validator removes them with a warning.
CONTAINER_OWNED_KEYS = frozenset(keys_with_policy(KeyPolicy.OWNED))
# Keys pipeline.toml decides (kohya_rules' output-name and base-model rules); the command line carries them.
PIPELINE_TOML_KEYS = frozenset({"output_name", "pretrained_model_name_or_path"})
# The image has no xformers and always runs SDPA: the command line says `--sdpa` (kohya_rules' attention rule).
ATTENTION_KEYS = frozenset({"xformers", "mem_eff_attn", "sdpa"})
# The argument table's secret, upload and unsupported keys: the validator refuses a config that sets them.
REFUSED_KEYS = frozenset(
    key
    for policy in (KeyPolicy.SECRET, KeyPolicy.UPLOAD, KeyPolicy.UNSUPPORTED)
    for key in keys_with_policy(policy)
)
# Every key the pipeline decides, or refuses, instead of config.toml. The command builder leaves them out of
# the config copy sd-scripts reads, so a kohya.toml that did not come through the validator cannot set them.
PIPELINE_DECIDED_KEYS = CONTAINER_OWNED_KEYS | PIPELINE_TOML_KEYS | ATTENTION_KEYS | REFUSED_KEYS
