"""Sample prompt lines read exactly as sd-scripts v0.10.1 reads them (`library/train_util.py:line_to_prompt_dict`).

sd-scripts splits the line on " --" and matches each part, case-insensitively, against a fixed list of
option patterns (`w (\\d+)`, `ss (.+)`, ...); a part that matches none, or whose value does not fit, is
silently ignored, and a sampler name it does not know falls back to DDIM (`get_my_scheduler`). Parsing never
fails here: what sd-scripts would ignore is returned as findings for the validator to report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# line_to_prompt_dict's patterns, in its order, with the prompt_dict key each sets.
_OPTIONS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (key, re.compile(pattern, re.IGNORECASE))
    for key, pattern in (
        ("width", r"w (\d+)"),
        ("height", r"h (\d+)"),
        ("seed", r"d (\d+)"),
        ("sample_steps", r"s (\d+)"),
        ("scale", r"l ([\d\.]+)"),
        ("guidance_scale", r"g ([\d\.]+)"),
        ("negative_prompt", r"n (.+)"),
        ("sample_sampler", r"ss (.+)"),
        ("controlnet_image", r"cn (.+)"),
        ("cfg_trunc_ratio", r"ctr (.+)"),
        ("renorm_cfg", r"rcfg (.+)"),
        ("flow_shift", r"fs (.+)"),
    )
)
_INT_KEYS = ("width", "height", "seed", "sample_steps")
_FLOAT_KEYS = ("scale", "guidance_scale", "cfg_trunc_ratio", "renorm_cfg")
# Options SDXL sampling in sdxl_train_network.py never reads (ControlNet, other architectures' samplers).
_NOT_FOR_SDXL = ("controlnet_image", "cfg_trunc_ratio", "renorm_cfg", "flow_shift", "guidance_scale")
# get_my_scheduler: the names it knows (compared as written, case-sensitively); anything else is DDIM.
KNOWN_SAMPLERS = (
    "ddim",
    "ddpm",
    "pndm",
    "lms",
    "k_lms",
    "euler",
    "k_euler",
    "euler_a",
    "k_euler_a",
    "dpmsolver",
    "dpmsolver++",
    "dpmsingle",
    "heun",
    "dpm_2",
    "k_dpm_2",
    "dpm_2_a",
    "k_dpm_2_a",
)
# sd-scripts renders a line without --w / --h at 512 px (sample_image_inference), which SDXL draws badly.
SDXL_SAMPLE_SIZE_PX = 1024
OPTION_HELP = (
    "--n (negative prompt), --w / --h (size), --d (seed), --l (CFG scale), --s (steps), --ss (sampler)"
)


@dataclass(frozen=True)
class PromptLine:
    """One prompt line as sd-scripts reads it: `options` holds the prompt_dict keys it sets, and
    `ignored` says, part by part, what sd-scripts would ignore and why."""

    prompt: str
    options: dict[str, str | int | float]
    ignored: list[str] = field(default_factory=list)
    unknown_sampler: str | None = None


def read_prompt_line(line: str) -> PromptLine:
    """`line` parsed as `line_to_prompt_dict` parses it (every part, the first one included, as there)."""
    parts = line.split(" --")
    options: dict[str, str | int | float] = {}
    ignored: list[str] = []
    for index, part in enumerate(parts):
        matched = False
        for key, pattern in _OPTIONS:
            match = pattern.match(part)
            if match is None:
                continue
            matched = True
            value = match.group(1)
            convert = int if key in _INT_KEYS else float if key in _FLOAT_KEYS else str
            try:
                options[key] = convert(value)
            except ValueError:
                ignored.append(
                    f"--{part.strip()}: {value!r} is not a number, so sd-scripts logs an error and skips it"
                )
                break
            if key in _NOT_FOR_SDXL and index:
                ignored.append(f"--{part.strip()}: SDXL sampling in sdxl_train_network.py does not use it")
            break
        if not matched and index:
            name = part.strip().split(" ", 1)[0]
            ignored.append(
                f"--{part.strip()}: sd-scripts knows no option --{name} with such a value and silently ignores it"
            )
    sampler = options.get("sample_sampler")
    unknown = sampler if isinstance(sampler, str) and sampler not in KNOWN_SAMPLERS else None
    return PromptLine(parts[0], options, ignored, unknown)


def with_sdxl_size(line: str) -> str:
    """`line` stripped, with `--w 1024` / `--h 1024` added for whichever size sd-scripts would not read from it
    (a later option wins in line_to_prompt_dict, so one the user gave is never overridden)."""
    options = read_prompt_line(line).options
    return line.strip() + "".join(
        f" --{key[0]} {SDXL_SAMPLE_SIZE_PX}" for key in ("width", "height") if key not in options
    )
