"""The datasets the differential tests give both the validator and real sd-scripts.

Each case writes a dataset folder (images, captions, `config.toml`, `pipeline.toml`) with the corpus
builders. Image sizes are chosen so that several aspect-ratio buckets exist; batch sizes 1, 2 and 4 and
gradient accumulation 1 and 3 run over the same mixed-bucket dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lora_pipeline.job_settings import StackLimits
from tests.corpus import (
    bmp_bytes_with_alpha,
    image_bytes,
    make_good_dataset,
    make_image,
    make_subset,
    write_caption,
)

SQUARE = (1024, 1024)
PORTRAIT = (832, 1216)
LANDSCAPE = (1216, 832)
WIDE = (1536, 640)
SMALL = (512, 512)
LARGE = (2048, 1536)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], None]
    """Writes the images and captions into the dataset root."""
    config: str = 'resolution = "1024,1024"\n'
    pipeline: str = ""
    limits: StackLimits = field(default_factory=StackLimits)


def _images(root: Path, folder: str, sizes: list[tuple[int, int]], extension: str = ".png") -> None:
    """One captioned image per size, named by its size: `<folder>/<w>x<h>_<n><extension>`."""
    tokens = folder.split("_", 1)[1] if "_" in folder else ""
    for index, size in enumerate(sizes):
        image = make_image(root / folder / f"{size[0]}x{size[1]}-{index}{extension}", size)
        write_caption(image.with_suffix(".caption"), f"{tokens}, picture {index}")


def mixed_buckets(root: Path) -> None:
    _images(root, "10_zkq", [SQUARE, SQUARE, SQUARE, PORTRAIT, PORTRAIT, LANDSCAPE])
    _images(root, "3_zkq style", [PORTRAIT, PORTRAIT, WIDE])


def folder_names(root: Path) -> None:
    # sd-scripts parses repeats with int(name.split("_")[0]): signs, leading zeros, spaces, other digits.
    for folder in ("+5_plus", "010_leading zeros", " 3_space", "１２_fullwidth", "4_a_b_c", "2", "7_"):
        make_subset(root, folder, count=1)
    # ... and skips these.
    for folder in ("0_zero", "-1_negative", "abc", "x_5", "__MACOSX", "1.5_float"):
        make_subset(root, folder, count=1)


def caption_files(root: Path) -> None:
    folder = root / "6_bluebot"
    for name in ("plain", "missing", "multiline", "crlf", "padded", "bom", "separator", "facecrop_a_b_c_d"):
        make_image(folder / f"{name}.png", SQUARE)
    write_caption(folder / "plain.caption", "bluebot, a robot")
    write_caption(folder / "multiline.caption", "bluebot first line\nsecond line\n")
    write_caption(folder / "crlf.caption", b"bluebot, crlf\r\nnext\r\n")
    write_caption(folder / "padded.caption", "   bluebot, padded \t\n")
    write_caption(folder / "bom.caption", "\ufeffbluebot, bom")
    write_caption(folder / "separator.caption", "bluebot\u2028still the first line")
    # Face-crop naming: name_<4 parts> falls back to name.caption.
    write_caption(folder / "facecrop.caption", "bluebot, from the face-crop base name")
    make_subset(root, "2_other thing", count=2, caption=None)


def text_captions(root: Path) -> None:
    make_subset(root, "4_robo", count=2, caption_extension=".txt")
    make_subset(root, "2_robo extra", count=1, caption_extension=".caption")
    make_subset(root, "1_robo bare", count=1, caption=None)


def extensions(root: Path) -> None:
    folder = root / "3_ext"
    for name in (
        "a.PNG",
        "b.JPG",
        "c.JPEG",
        "d.jpeg",
        "e.webp",
        "f.bmp",
        "g.WEBP",
        "h.BMP",
        "i.Jpg",
        ".hidden.png",
    ):
        make_image(folder / name, PORTRAIT if name[0] in "aceg" else SQUARE)
    make_image(folder / "nested" / "deep.png", SQUARE)
    make_image(root / "loose.png", SQUARE)
    make_image(root / "2_ext two" / "x.jpg", LANDSCAPE)


def sizes_for_upscale(root: Path) -> None:
    _images(root, "5_sz", [SMALL, SQUARE, LARGE, (700, 1400), (1400, 700), (300, 2000)])


def wildcard(root: Path) -> None:
    folder = root / "3_wild"
    make_image(folder / "a.png", SQUARE)
    make_image(folder / "b.png", PORTRAIT)
    write_caption(folder / "a.caption", "wild one\n\n  wild two  \nwild three")
    write_caption(folder / "b.caption", "\nwild after a blank line\n")


def empty_subsets(root: Path) -> None:
    (root / "5_empty").mkdir(parents=True)
    write_caption(root / "5_empty" / "orphan.caption", "nothing")
    make_image(root / "loose.png", SQUARE)


def many_images(root: Path) -> None:
    _images(root, "1_many", [SQUARE] * 7 + [PORTRAIT] * 5 + [LANDSCAPE] * 3 + [WIDE] * 2)
    _images(root, "4_few", [SQUARE, PORTRAIT])


def same_stem(root: Path) -> None:
    folder = root / "4_twin"
    for name in ("a.png", "a.PNG", "a.jpg", "b.webp"):
        make_image(folder / name, SQUARE if name != "a.jpg" else PORTRAIT)
    write_caption(folder / "a.caption", "twin a")
    write_caption(folder / "b.png.caption", "never read: the caption of b is b.caption")


def stored_orientation(root: Path) -> None:
    # sd-scripts sizes images with imagesize (stored pixels, no EXIF rotation); BMP rows may be stored top-down.
    folder = root / "5_turn"
    make_image(folder / "rotated.jpg", LANDSCAPE, exif_orientation=6)
    make_image(folder / "mirrored.jpg", WIDE, exif_orientation=2)
    (folder / "topdown.bmp").write_bytes(bmp_bytes_with_alpha(832, 1216, top_down=True))
    (folder / "bottomup.bmp").write_bytes(bmp_bytes_with_alpha(1216, 832))
    (folder / "content-is-png.jpg").write_bytes(image_bytes("PNG", PORTRAIT))


def odd_sizes(root: Path) -> None:
    sizes = [(100, 100), (1000, 1000), (1023, 767), (3000, 1000), (640, 2000), (1025, 1025), (64, 4000)]
    _images(root, "2_odd", sizes)
    _images(root, "1_odd more", [(1920, 1080), (1080, 1920), (2560, 1440)], extension=".jpg")


def blank_caption(root: Path) -> None:
    make_subset(root, "3_blank", count=2)
    write_caption(root / "3_blank" / "img00.caption", "\n  \nsecond line")
    write_caption(root / "3_blank" / "img01.caption", "   ")


def empty_caption_file(root: Path) -> None:
    make_subset(root, "3_empty caption", count=2)
    write_caption(root / "3_empty caption" / "img01.caption", b"")


def latin1_caption(root: Path) -> None:
    make_subset(root, "3_latin", count=1)
    write_caption(root / "3_latin" / "img00.caption", "caf\u00e9 latin".encode("latin-1"))


def huge_repeats(root: Path) -> None:
    _images(root, "1000_big", [SQUARE, PORTRAIT])
    _images(root, "1_small", [WIDE])


FOUR_GPUS = StackLimits(allowed_instance_types=(*StackLimits().allowed_instance_types, "ml.g5.12xlarge"))

CASES: list[Case] = [
    Case("good_dataset", lambda root: make_good_dataset(root, settings=False)),
    *[
        Case(
            f"mixed_buckets_batch{batch}_accum{accum}",
            mixed_buckets,
            config=f"train_batch_size = {batch}\ngradient_accumulation_steps = {accum}\nmax_train_epochs = 4\n",
        )
        for batch in (1, 2, 4)
        for accum in (1, 3)
    ],
    Case("many_images_batch4", many_images, config="train_batch_size = 4\nmax_train_epochs = 3\n"),
    Case("max_train_steps", mixed_buckets, config="max_train_steps = 50\ntrain_batch_size = 2\n"),
    Case("sd_scripts_default_steps", mixed_buckets, config="[training_arguments]\ntrain_batch_size = 3\n"),
    Case(
        "four_gpus",
        many_images,
        config="train_batch_size = 2\ngradient_accumulation_steps = 2\nmax_train_epochs = 5\n",
        pipeline='instance_type = "ml.g5.12xlarge"\n',
        limits=FOUR_GPUS,
    ),
    Case("folder_names", folder_names),
    Case("caption_files", caption_files),
    Case("txt_captions", text_captions, config='caption_extension = ".txt"\n'),
    Case("txt_captions_misspelt_key", text_captions, config='caption_extention = ".txt"\n'),
    Case("extensions", extensions, config="train_batch_size = 2\n"),
    Case("no_buckets", mixed_buckets, config="enable_bucket = false\ntrain_batch_size = 2\n"),
    Case("bucket_no_upscale", sizes_for_upscale, config="bucket_no_upscale = true\ntrain_batch_size = 2\n"),
    Case(
        "resolution_768_steps_32",
        sizes_for_upscale,
        config='resolution = "768"\nbucket_reso_steps = 32\nmin_bucket_reso = 320\nmax_bucket_reso = 1536\n',
    ),
    Case("wildcard_captions", wildcard, config="enable_wildcard = true\n"),
    Case("no_images", empty_subsets),
    Case(
        "aws_blog_style",
        mixed_buckets,
        config=(Path(__file__).parents[2] / "examples" / "configs" / "aws-blog-style.toml").read_text(),
    ),
    Case(
        "minimal_example",
        text_captions,
        config=(Path(__file__).parents[2] / "examples" / "configs" / "minimal.toml").read_text(),
    ),
    Case("caption_extension_without_dot", text_captions, config='caption_extension = "txt"\n'),
    Case("same_stem", same_stem, config="train_batch_size = 2\n"),
    Case("stored_orientation", stored_orientation, config="train_batch_size = 2\n"),
    Case(
        "odd_sizes_bucket_limits",
        odd_sizes,
        config="min_bucket_reso = 320\nmax_bucket_reso = 2000\nbucket_reso_steps = 32\ntrain_batch_size = 3\n",
    ),
    Case("odd_sizes_no_upscale", odd_sizes, config="bucket_no_upscale = true\ntrain_batch_size = 2\n"),
    Case("odd_sizes_resolution_896", odd_sizes, config='resolution = "896"\ntrain_batch_size = 3\n'),
    Case("dataset_repeats_ignored", mixed_buckets, config="dataset_repeats = 3\n"),
    Case("epochs_override_steps", mixed_buckets, config="max_train_epochs = 2\nmax_train_steps = 999\n"),
    Case("blank_caption_lines", blank_caption),
    Case("empty_caption_file", empty_caption_file),
    Case("latin1_caption", latin1_caption),
    Case(
        "huge_repeats_batch4", huge_repeats, config="train_batch_size = 4\ngradient_accumulation_steps = 3\n"
    ),
    Case(
        "four_gpus_max_steps",
        huge_repeats,
        config="train_batch_size = 2\nmax_train_steps = 777\n",
        pipeline='instance_type = "ml.g5.12xlarge"\n',
        limits=FOUR_GPUS,
    ),
    Case(
        "sample_prompts",
        mixed_buckets,
        config="network_dim = 8\nnetwork_alpha = 4\nlearning_rate = 1\n",
        pipeline='sample_prompts = ["zkq on a beach --w 832 --h 1216"]\nsample_every_n_epochs = 2\n',
    ),
]
