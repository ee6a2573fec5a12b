"""The bundled example datasets, drawn procedurally (no third-party images).

`bluebot` is a small blue robot in varied poses, places and light, captioned with the trigger word
`bluebot`; it trains with the smoke trainer. `broken` has one mistake of each common kind, to show a rejection.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

TRIGGER = "bluebot"
SUBSET = f"20_{TRIGGER}"
_SCENES = [
    ("grass", (96, 168, 72), (150, 200, 255)),
    ("sand", (222, 196, 140), (120, 180, 240)),
    ("snow", (240, 244, 250), (180, 190, 210)),
    ("a red carpet", (170, 30, 40), (60, 40, 50)),
    ("a wooden floor", (150, 100, 60), (230, 220, 200)),
    ("the moon", (120, 120, 120), (10, 10, 30)),
]
_ACTIONS = ["standing", "waving", "jumping"]

EXAMPLE_CONFIG = """\
# Kohya sd-scripts settings (any sdxl_train_network.py argument). Unset keys get the pipeline's SDXL defaults.
network_dim = 8
network_alpha = 4
max_train_epochs = 2
learning_rate = 1e-4
# The pipeline trains only the U-Net by default (cheaper per step); this key trains the text encoders too,
# at a tenth of learning_rate.
network_train_unet_only = false
"""

EXAMPLE_SETTINGS = """\
# Job settings. The smoke trainer proves the whole pipeline on a CPU in minutes; remove the line for real Kohya.
trainer = "smoke"
output_name = "bluebot"
sample_prompts = ["a photo of bluebot, a small blue robot waving on the moon"]
"""


def _draw_robot(
    size: int, rng: random.Random, ground: tuple[int, int, int], sky: tuple[int, int, int], action: str
) -> Image.Image:
    image = Image.new("RGB", (size, size), sky)
    draw = ImageDraw.Draw(image)
    horizon = int(size * rng.uniform(0.55, 0.7))
    draw.rectangle([0, horizon, size, size], fill=ground)
    scale = rng.uniform(0.18, 0.3) * size
    cx = rng.uniform(0.3, 0.7) * size
    lift = scale * 0.6 if action == "jumping" else 0
    feet = horizon + scale * 0.5 - lift
    body = [cx - scale * 0.5, feet - scale * 1.4, cx + scale * 0.5, feet - scale * 0.4]
    blue = (30 + rng.randint(0, 30), 90 + rng.randint(0, 40), 220)
    draw.rectangle(body, fill=blue, outline=(20, 30, 80), width=max(2, size // 256))
    head = [cx - scale * 0.35, body[1] - scale * 0.6, cx + scale * 0.35, body[1] - scale * 0.05]
    draw.rounded_rectangle(
        head, radius=scale * 0.1, fill=blue, outline=(20, 30, 80), width=max(2, size // 256)
    )
    for ex in (-0.15, 0.15):
        eye = [
            cx + (ex - 0.06) * scale,
            head[1] + scale * 0.15,
            cx + (ex + 0.06) * scale,
            head[1] + scale * 0.27,
        ]
        draw.ellipse(eye, fill=(255, 230, 60))
    draw.line([cx, head[1], cx, head[1] - scale * 0.3], fill=(20, 30, 80), width=max(2, size // 200))
    draw.ellipse(
        [cx - scale * 0.06, head[1] - scale * 0.42, cx + scale * 0.06, head[1] - scale * 0.3],
        fill=(230, 40, 40),
    )
    arm_raise = -scale * 0.5 if action == "waving" else scale * 0.3
    draw.line(
        [body[2], body[1] + scale * 0.2, body[2] + scale * 0.35, body[1] + arm_raise],
        fill=blue,
        width=int(scale * 0.12),
    )
    draw.line(
        [body[0], body[1] + scale * 0.2, body[0] - scale * 0.35, body[1] + scale * 0.3],
        fill=blue,
        width=int(scale * 0.12),
    )
    for lx in (-0.25, 0.25):
        draw.rectangle(
            [cx + (lx - 0.1) * scale, body[3], cx + (lx + 0.1) * scale, feet + scale * 0.1], fill=(20, 30, 80)
        )
    return image


def write_example_dataset(root: Path, images: int = 12, size: int = 1024, seed: int = 7) -> Path:
    """Write the bluebot dataset into `root` (created); returns `root`."""
    rng = random.Random(seed)
    subset = root / SUBSET
    subset.mkdir(parents=True, exist_ok=True)
    for index in range(images):
        place, ground, sky = _SCENES[index % len(_SCENES)]
        action = _ACTIONS[index % len(_ACTIONS)]
        image = _draw_robot(size, rng, ground, sky, action)
        stem = subset / f"{TRIGGER}_{index:02d}"
        if index % 3 == 2:
            image.save(stem.with_suffix(".jpg"), quality=90)
        else:
            image.save(stem.with_suffix(".png"))
        stem.with_suffix(".caption").write_text(
            f"a photo of {TRIGGER}, a small blue robot {action} on {place}\n"
        )
    (root / "config.toml").write_text(EXAMPLE_CONFIG)
    (root / "pipeline.toml").write_text(EXAMPLE_SETTINGS)
    return root


def write_broken_dataset(root: Path) -> Path:
    """A dataset with one common mistake of each kind: every one is caught before a GPU is rented."""
    write_example_dataset(root, images=6, size=512)
    subset = root / SUBSET
    (subset / f"{TRIGGER}_00.png").rename(subset / f"{TRIGGER}_00.Png")
    png = (subset / f"{TRIGGER}_01.png").read_bytes()
    (subset / f"{TRIGGER}_01.png").write_bytes(png[: len(png) // 2])
    (subset / f"{TRIGGER}_03.caption").write_text("")
    (subset / f"{TRIGGER}_04.caption").rename(subset / f"{TRIGGER}_04.txt")
    (root / "robot pictures").mkdir()
    (subset / f"{TRIGGER}_05.jpg").rename(root / "robot pictures" / "robot.jpg")
    (root / "config.toml").write_text(
        'resolution = 1024\nlearning_rat = 1e-4\nnetwork_module = "my.own.module"\n'
    )
    (root / "pipeline.toml").write_text("volume_size_gb = 30\n")
    return root
