"""Which parts of SDXL a LoRA run trains, and at what learning rate, worked out as sd-scripts v0.10.1 does.

- `train_network.py:NetworkTrainer.train`: the U-Net gets LoRA modules unless
  `network_train_text_encoder_only`, the text encoders unless `network_train_unet_only`;
  `text_encoder_lr` given as a list counts by its first entry (none when empty) for modules without
  `prepare_optimizer_params_with_multiple_te_lrs` (all the modules allowed here).
- `networks/lora.py` and `networks/dylora.py` `prepare_optimizer_params`: a part's rate is its own
  (`unet_lr`, `text_encoder_lr`) or else `learning_rate`; with LoRA+ (`loraplus_*lr_ratio` in network_args)
  the `lora_up` weights train at rate x ratio. A group whose rate is 0 is dropped ("NO LR skipping!"), and an
  optimizer over no groups fails with "optimizer got an empty parameter list".
- `networks/lora_fa.py` keeps a group at rate 0: it runs and learns nothing.
A part whose `lora_up` weights do not train learns nothing either: they start at 0 (LoRAModule.__init__).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lora_pipeline.evaluated_args import network_kwargs

UNET = "U-Net"
TEXT_ENCODERS = "text encoders"
# Modules whose prepare_optimizer_params reads LoRA+ ratios from network_args.
_LORAPLUS_MODULES = ("networks.lora", "networks.dylora")


@dataclass(frozen=True)
class PartRate:
    """One part of the model that gets LoRA modules, and the rate its `lora_up` weights train at."""

    part: str
    rate: float
    rate_from: str
    """The setting the rate comes from, as the user would write it (e.g. `unet_lr = 0.0`)."""

    @property
    def trains(self) -> bool:
        return self.rate != 0


def _network_arg(config: Mapping[str, Any], name: str) -> float | None:
    try:
        return float(network_kwargs(config)[name])
    except (KeyError, ValueError):
        return None  # absent, or reported by the network_args rule


def _first_text_encoder_lr(value: Any) -> float | None:
    """train_network.py: a number is used as is, a list by its first entry, an empty list as "not set"."""
    if isinstance(value, list):
        return float(value[0]) if value else None
    return None if value is None else float(value)


def part_rates(config: Mapping[str, Any]) -> list[PartRate]:
    """The parts that get LoRA modules, with the rate of their `lora_up` weights. `config` is the effective
    config (learning_rate always present); an empty list means no part gets modules."""
    module = config.get("network_module", "networks.lora")
    learning_rate = float(config["learning_rate"])
    parts: list[tuple[str, float | None, str]] = []
    if not config.get("network_train_unet_only"):
        te_lr = _first_text_encoder_lr(config.get("text_encoder_lr"))
        parts.append((TEXT_ENCODERS, te_lr, "text_encoder_lr"))
    if not config.get("network_train_text_encoder_only"):
        unet_lr = config.get("unet_lr")
        parts.append((UNET, None if unet_lr is None else float(unet_lr), "unet_lr"))
    rates = []
    for part, own, key in parts:
        rate, rate_from = (learning_rate, f"learning_rate = {learning_rate:g}")
        if own is not None:
            rate, rate_from = own, f"{key} = {own:g}"
        if module in _LORAPLUS_MODULES:
            # `self.loraplus_unet_lr_ratio or self.loraplus_lr_ratio`: a specific ratio of 0 falls through.
            specific = "loraplus_unet_lr_ratio" if part == UNET else "loraplus_text_encoder_lr_ratio"
            ratio = _network_arg(config, specific) or _network_arg(config, "loraplus_lr_ratio")
            if ratio is not None:
                rate, rate_from = rate * ratio, f"{rate_from} x LoRA+ ratio {ratio:g}"
        rates.append(PartRate(part, rate, rate_from))
    return rates
