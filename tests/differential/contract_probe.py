"""What sd-scripts' own functions make of the inputs `kohya_contract` has rules for: run inside `.venv-kohya`.

    .venv-kohya/bin/python tests/differential/contract_probe.py REQUEST.json RESULT.json

REQUEST.json: `{"sd_scripts": DIR, "folders": [str], "resolutions": [str], "caption_configs": [{...}],
"config_toml": str}`. RESULT.json has one entry per input, computed by sd-scripts v0.10.1 and nothing else:
- `folders`: `{name: [repeats, class_tokens] | null}` from `config_util.generate_dreambooth_subsets_config_by_subdirs`
  over a folder holding one sub-folder per name (null: the folder is skipped);
- `resolutions`: `{value: [w, h] | null}` from `train_util.prepare_dataset_args` (null: it raises);
- `caption_extensions`: the extension `train_util.DreamBoothSubset` ends up with for each config (the
  `caption_extension` / `caption_extention` pair through `prepare_dataset_args`, then the subset's constructor);
- `flattened`: the namespace `train_util.read_config_from_file` builds from `config_toml`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def _subset_extension(train_util: Any, extension: str) -> str:
    signature = inspect.signature(train_util.DreamBoothSubset.__init__)
    required = [
        n for n, p in signature.parameters.items() if n != "self" and p.default is inspect.Parameter.empty
    ]
    arguments: dict[str, Any] = dict.fromkeys(required)
    arguments.update(
        image_dir="unused",
        is_reg=False,
        class_tokens="",
        num_repeats=1,
        caption_separator=",",
        keep_tokens=0,
        caption_dropout_rate=0.0,
        caption_dropout_every_n_epochs=0,
        caption_tag_dropout_rate=0.0,
        token_warmup_min=1,
        token_warmup_step=0,
        caption_extension=extension,
    )
    return str(train_util.DreamBoothSubset(**arguments).caption_extension)


def main(request_file: str, result_file: str) -> None:
    request = json.loads(Path(request_file).read_text())
    sys.path.insert(0, request["sd_scripts"])
    from library import config_util, train_util

    with tempfile.TemporaryDirectory() as root:
        for name in request["folders"]:
            (Path(root) / name).mkdir()
        subsets = config_util.generate_dreambooth_subsets_config_by_subdirs(root)
        found = {Path(s["image_dir"]).name: [s["num_repeats"], s["class_tokens"]] for s in subsets}
        folders = {name: found.get(name) for name in request["folders"]}

        resolutions: dict[str, Any] = {}
        for value in request["resolutions"]:
            args = argparse.Namespace(caption_extention=None, resolution=value, face_crop_aug_range=None)
            try:
                train_util.prepare_dataset_args(args, False)
                resolutions[value] = list(args.resolution)
            except (ValueError, AssertionError):
                resolutions[value] = None

        caption_extensions = []
        for config in request["caption_configs"]:
            args = argparse.Namespace(
                caption_extension=config.get("caption_extension", ".caption"),
                caption_extention=config.get("caption_extention"),
                resolution=None,
                face_crop_aug_range=None,
            )
            train_util.prepare_dataset_args(args, False)
            caption_extensions.append(_subset_extension(train_util, args.caption_extension))

        config_file = Path(root) / "config.toml"
        config_file.write_text(request["config_toml"], encoding="utf-8")
        parser = argparse.ArgumentParser()
        parser.add_argument("--config_file")
        parser.add_argument("--output_config", action="store_true")
        sys.argv = [sys.argv[0], "--config_file", str(config_file)]
        namespace = train_util.read_config_from_file(parser.parse_args(), parser)
        flattened = {k: v for k, v in vars(namespace).items() if k not in ("config_file", "output_config")}

    result = {
        "folders": folders,
        "resolutions": resolutions,
        "caption_extensions": caption_extensions,
        "flattened": flattened,
    }
    Path(result_file).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
