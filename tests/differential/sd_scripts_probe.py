"""What real sd-scripts makes of a dataset and its command line: run inside `.venv-kohya`, never imported.

    .venv-kohya/bin/python tests/differential/sd_scripts_probe.py REQUEST.json RESULT.json

REQUEST.json: `{"sd_scripts": DIR, "cases": [{"id": str, "argv": [str, ...], "num_processes": int}, ...]}`,
where `argv` is what `sdxl_train_network.py` receives after its own name (the training container's
`--config_file kohya.toml --train_data_dir ... ` arguments). All cases run in this one process, because
importing torch and sd-scripts takes seconds.

For each case this runs the start of sd-scripts v0.10.1's own training code, up to the step count, with its
own functions and nothing re-implemented:
- `sdxl_train_network.py` `__main__`: `setup_parser()`, `parse_args()`,
  `train_util.verify_command_line_training_args`, `train_util.read_config_from_file` (the `--config_file`
  reading: TOML tables flattened one level, values kept with their TOML types, command line on top);
- `train_network.NetworkTrainer.train`, in its order: `train_util.verify_training_args`,
  `train_util.prepare_dataset_args`, the latents caching strategy (`get_latents_caching_strategy`: it decides
  whether image sizes come from cache files), the DreamBooth user config from
  `config_util.generate_dreambooth_subsets_config_by_subdirs(train_data_dir)` through
  `BlueprintGenerator(ConfigSanitizer(True, True, masked_loss, True))` and
  `config_util.generate_dataset_group_by_blueprint` (which reads the captions and runs `make_buckets`),
  the "No data found" check, `SdxlNetworkTrainer.assert_extra_args`, the `DataLoader` over the dataset group
  (batch_size 1: each item is one bucket batch), and the step arithmetic:
  `max_train_steps = max_train_epochs * ceil(len(train_dataloader) / num_processes / gradient_accumulation_steps)`.

The tokenize strategy is not set: building the dataset, its captions and its buckets does not read it (it is
used per item, when a batch is loaded), and the tokenizers are not needed to count steps.

RESULT.json: `{"args_table": [...], "cases": [...]}`. `args_table` is `generate_args_table.table_rows`, the
rows of `sdxl_train_network_args.tsv` as sd-scripts' parser gives them (one process serves both). `cases` has
one object per case, in request order:
- `args`: every parsed argument as `{"type": <Python type name>, "value": <JSON value>}` (lists also give
  `item_types`), as `read_config_from_file` returns them, before `prepare_dataset_args` converts anything;
- `subsets`: `{"folder", "repeats", "class_tokens", "images": [{"file", "caption"}]}` for every subset
  the dataset kept (`file` relative to `train_data_dir`; `caption` as `ImageInfo.caption` holds it);
- `buckets`: `{"resolution": [w, h], "count"}` for each non-empty bucket, images counted once per repeat;
- `num_train_images` (images x repeats), `batches_per_epoch` (`len(train_dataloader)`),
  `steps_per_epoch` (`ceil(batches / num_processes / gradient_accumulation_steps)`), `total_steps`
  (`max_train_steps` after the override), `epochs` (`ceil(max_train_steps / num_update_steps_per_epoch)`);
- `error`: None, or `"<exception type>: <message>"` where sd-scripts stopped (`"No data found"` when it would
  log that and return without training).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def describe_args(args: Any) -> dict[str, dict[str, Any]]:
    described = {}
    for name, value in sorted(vars(args).items()):
        entry: dict[str, Any] = {"type": type(value).__name__, "value": _jsonable(value)}
        if isinstance(value, list | tuple):
            entry["item_types"] = [type(item).__name__ for item in value]
        described[name] = entry
    return described


class Probe:
    def __init__(self, sd_scripts: Path) -> None:
        root = sd_scripts.resolve()
        sys.path.insert(0, str(root))
        os.chdir(root)  # as `accelerate launch` runs it: sd-scripts imports its modules from here
        import sdxl_train_network
        import torch
        from library import config_util, deepspeed_utils, strategy_base, train_util

        self.torch = torch
        self.sdxl_train_network = sdxl_train_network
        self.config_util = config_util
        self.deepspeed_utils = deepspeed_utils
        self.strategy_base = strategy_base
        self.train_util = train_util

    def run(self, case: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {"id": case["id"], "error": None}
        # Each case is a fresh training run: no strategy may leak from the previous one.
        self.strategy_base.LatentsCachingStrategy._strategy = None
        try:
            self._run(case, result)
        except (Exception, SystemExit) as error:
            result["error"] = f"{type(error).__name__}: {error}"
        return result

    def _run(self, case: dict[str, Any], result: dict[str, Any]) -> None:
        train_util, config_util = self.train_util, self.config_util
        # sdxl_train_network.py, `if __name__ == "__main__"`
        parser = self.sdxl_train_network.setup_parser()
        sys.argv = ["sdxl_train_network.py", *case["argv"]]
        args = parser.parse_args()
        train_util.verify_command_line_training_args(args)
        args = train_util.read_config_from_file(args, parser)
        result["args"] = describe_args(args)

        # train_network.NetworkTrainer.train, up to the step count
        trainer = self.sdxl_train_network.SdxlNetworkTrainer()
        train_util.verify_training_args(args)
        train_util.prepare_dataset_args(args, True)
        self.deepspeed_utils.prepare_deepspeed_args(args)
        self.strategy_base.LatentsCachingStrategy.set_strategy(trainer.get_latents_caching_strategy(args))
        blueprint_generator = config_util.BlueprintGenerator(
            config_util.ConfigSanitizer(True, True, args.masked_loss, True)
        )
        user_config = {
            "datasets": [
                {
                    "subsets": config_util.generate_dreambooth_subsets_config_by_subdirs(
                        args.train_data_dir, args.reg_data_dir
                    )
                }
            ]
        }
        blueprint = blueprint_generator.generate(user_config, args)
        train_dataset_group, val_dataset_group = config_util.generate_dataset_group_by_blueprint(
            blueprint.dataset_group
        )
        result.update(self._dataset(train_dataset_group, Path(args.train_data_dir)))
        if len(train_dataset_group) == 0:
            raise RuntimeError("No data found")
        trainer.assert_extra_args(args, train_dataset_group, val_dataset_group)

        collator = train_util.collator_class(0, 0, train_dataset_group)
        train_dataloader = self.torch.utils.data.DataLoader(
            train_dataset_group, batch_size=1, shuffle=True, collate_fn=collator, num_workers=0
        )
        num_processes = int(case.get("num_processes", 1))
        steps_per_epoch = math.ceil(len(train_dataloader) / num_processes / args.gradient_accumulation_steps)
        if args.max_train_epochs is not None:
            args.max_train_steps = args.max_train_epochs * steps_per_epoch
        num_update_steps_per_epoch = math.ceil(
            math.ceil(len(train_dataloader) / num_processes) / args.gradient_accumulation_steps
        )
        result.update(
            batches_per_epoch=len(train_dataloader),
            steps_per_epoch=steps_per_epoch,
            total_steps=args.max_train_steps,
            epochs=math.ceil(args.max_train_steps / num_update_steps_per_epoch),
        )

    @staticmethod
    def _dataset(group: Any, train_data_dir: Path) -> dict[str, Any]:
        subsets = []
        buckets = []
        for dataset in group.datasets:
            for subset in dataset.subsets:
                images = [
                    {"file": Path(key).relative_to(train_data_dir).as_posix(), "caption": info.caption}
                    for key, info in dataset.image_data.items()
                    if dataset.image_to_subset[key] is subset
                ]
                subsets.append(
                    {
                        "folder": Path(subset.image_dir).name,
                        "repeats": subset.num_repeats,
                        "class_tokens": subset.class_tokens,
                        "images": sorted(images, key=lambda image: image["file"]),
                    }
                )
            manager = dataset.bucket_manager
            buckets += [
                {"resolution": list(reso), "count": len(bucket)}
                for reso, bucket in zip(manager.resos, manager.buckets, strict=True)
                if bucket
            ]
        return {
            "subsets": sorted(subsets, key=lambda subset: subset["folder"]),
            "buckets": sorted(buckets, key=lambda bucket: bucket["resolution"]),
            "num_train_images": group.num_train_images,
        }


def main() -> None:
    from generate_args_table import table_rows  # this script's folder is first on sys.path

    request = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    result_path = Path(sys.argv[2]).resolve()
    probe = Probe(Path(request["sd_scripts"]))
    results = {
        "args_table": table_rows(Path(request["sd_scripts"])),
        "cases": [probe.run(case) for case in request["cases"]],
    }
    result_path.write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
