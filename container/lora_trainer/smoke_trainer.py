"""The smoke trainer: LoRA steps on a tiny random SDXL-shaped model with torch (`smoke_cli` imports it only once
there is data to train on)."""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as functional
from accelerate import Accelerator
from diffusers import DDPMScheduler
from peft import LoraConfig, inject_adapter_in_model
from PIL import Image
from safetensors.torch import save_file

from lora_pipeline.plan import SMOKE_TRAINING_STEPS
from lora_pipeline.training_metrics import TrainingProgress, format_metric_line
from lora_trainer.kohya_format import kohya_state_dict, peft_lora_weights
from lora_trainer.sd_scripts_schedule import (
    EngineAssertion,
    EngineRun,
    OptimizerStep,
    Save,
    events,
    start,
)
from lora_trainer.smoke_dataset import TrainingImage
from lora_trainer.smoke_metadata import metadata_for
from lora_trainer.tiny_sdxl import IMAGE_SIZE, SCHEDULER_CONFIG, UNET_CONFIG, build_tiny_sdxl
from lora_trainer.workspace import TRAIN_STATE_FILE

EXIT_STOPPED = 143
MAX_RANK = 8
MAX_BATCH = 4
UNET_TARGETS = (
    r".*attentions\.\d+\.(proj_in|proj_out"
    r"|transformer_blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)"
    r"|transformer_blocks\.\d+\.ff\.net\.(0\.proj|2))"
)
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
SAVE_DTYPES = {"float": "float32", "fp16": "float16", "bf16": "bfloat16"}
_PROMPT_OPTION = re.compile(r"\s--\w+.*$")


class _Network(torch.nn.Module):
    """The three trained models under one module, so accelerate saves and restores them together."""

    def __init__(self, unet: torch.nn.Module, text_encoder: torch.nn.Module, text_encoder_2: torch.nn.Module):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2


class SmokeTrainer:
    def __init__(self, args: argparse.Namespace, config: dict[str, Any], images: list[TrainingImage]) -> None:
        self.args = args
        self.config = config
        self.images = images
        self.seed = int(config.get("seed") or 42)
        self.rank = min(int(config.get("network_dim") or 4), MAX_RANK)
        self.alpha = float(config.get("network_alpha", 1.0))
        self.learning_rate = float(config.get("unet_lr") or config.get("learning_rate") or 1e-4)
        self.batch_size = max(1, min(int(config.get("train_batch_size", 1)), MAX_BATCH))
        self.unet_only = bool(config.get("network_train_unet_only"))
        self.total_steps = args.max_train_steps or SMOKE_TRAINING_STEPS
        self.items = [image for image in images for _ in range(image.repeats)]
        self.steps_per_epoch = math.ceil(len(self.items) / self.batch_size)
        self.sample_every_n_epochs = int(config.get("sample_every_n_epochs") or 1)
        self.started_at = time.time()
        with tempfile.TemporaryDirectory() as tokenizer_dir:
            self.model = build_tiny_sdxl(self.seed, Path(tokenizer_dir), [image.caption for image in images])
        self.noise_scheduler = DDPMScheduler(**SCHEDULER_CONFIG)

    def _add_lora(self) -> list[torch.nn.Parameter]:
        model = self.model
        for part in (model.unet, model.vae, model.text_encoder, model.text_encoder_2):
            part.requires_grad_(False)
        lora = {"r": self.rank, "lora_alpha": self.alpha, "init_lora_weights": True}
        inject_adapter_in_model(LoraConfig(target_modules=UNET_TARGETS, **lora), model.unet)
        trained: list[torch.nn.Module] = [model.unet]
        if not self.unet_only:
            for encoder in (model.text_encoder, model.text_encoder_2):
                inject_adapter_in_model(LoraConfig(target_modules=TEXT_ENCODER_TARGETS, **lora), encoder)
                trained.append(encoder)
        return [p for part in trained for name, p in part.named_parameters() if "lora_" in name]

    def _latents(self) -> dict[Path, torch.Tensor]:
        vae = self.model.vae
        cache = {}
        with torch.no_grad():
            for image in self.images:
                pixels = Image.open(image.path).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE))
                tensor = torch.tensor(list(pixels.getdata()), dtype=torch.float32)
                tensor = tensor.view(IMAGE_SIZE, IMAGE_SIZE, 3).permute(2, 0, 1) / 127.5 - 1.0
                latent = vae.encode(tensor.unsqueeze(0)).latent_dist.mode()
                cache[image.path] = latent[0] * vae.config.scaling_factor
        return cache

    def _text_conditioning(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        hidden = []
        pooled = torch.empty(0)
        for tokenizer, encoder in (
            (model.tokenizer, model.text_encoder),
            (model.tokenizer_2, model.text_encoder_2),
        ):
            ids = tokenizer(
                captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
            )
            output = encoder(ids.input_ids, output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
            if encoder is model.text_encoder_2:
                pooled = output.text_embeds
        return torch.cat(hidden, dim=-1), pooled

    def _batch(self, step: int) -> list[TrainingImage]:
        epoch, position = divmod(step, self.steps_per_epoch)
        order = list(self.items)
        random.Random(self.seed + epoch).shuffle(order)
        return order[position * self.batch_size : (position + 1) * self.batch_size]

    def _loss(self, batch: list[TrainingImage], latents: dict[Path, torch.Tensor], step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + step)
        clean = torch.stack([latents[image.path] for image in batch])
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (len(batch),), generator=generator
        )
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        context, pooled = self._text_conditioning([image.caption for image in batch])
        size = float(IMAGE_SIZE)
        time_ids = torch.tensor([[size, size, 0.0, 0.0, size, size]] * len(batch))
        prediction = self.model.unet(
            noisy, timesteps, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}
        ).sample
        return functional.mse_loss(prediction, noise)

    def _engine_run(self, steps_from_state: int | None) -> EngineRun:
        def setting(key: str) -> int | None:
            value = self.config.get(key)
            return int(value) if value else None

        return EngineRun(
            batches_per_epoch=self.steps_per_epoch,
            max_train_steps=self.total_steps,
            save_every_n_epochs=setting("save_every_n_epochs"),
            save_every_n_steps=setting("save_every_n_steps"),
            save_last_n_epochs=setting("save_last_n_epochs"),
            save_last_n_epochs_state=setting("save_last_n_epochs_state"),
            save_last_n_steps=setting("save_last_n_steps"),
            save_last_n_steps_state=setting("save_last_n_steps_state"),
            steps_from_state=steps_from_state,
            initial_step=self.args.initial_step,
            skip_until_initial_step=self.args.skip_until_initial_step,
        )

    def _epoch_end(self, epoch: int, final: bool) -> None:
        """sd-scripts' samples at the end of an epoch (train_network.py, `sample_images` after the epoch loop;
        train_util.sample_images_common skips epochs off `sample_every_n_epochs`); the last epoch always samples.
        The epoch's LoRA and state come from the schedule's epoch `Save`, made from these same weights."""
        if self.args.sample_prompts is not None and (final or epoch % self.sample_every_n_epochs == 0):
            self._render_samples(epoch)

    def train(self, stop: Callable[[], bool]) -> int:
        """Train as sd-scripts' loop runs (lora_trainer.sd_scripts_schedule), saving and resuming as it does."""
        # The model is so small that thread hand-offs cost more than they save, badly so on a busy CPU.
        torch.set_num_threads(1)
        parameters = self._add_lora()
        latents = self._latents()
        optimizer = torch.optim.AdamW(parameters, lr=self.learning_rate)
        accelerator = Accelerator(cpu=True)
        network = _Network(self.model.unet, self.model.text_encoder, self.model.text_encoder_2)
        network, optimizer = accelerator.prepare(network, optimizer)
        recorded = {"current_epoch": 0, "current_step": 0}

        def write_train_state(models: list[torch.nn.Module], weights: list[Any], output_dir: str) -> None:
            Path(output_dir, TRAIN_STATE_FILE).write_text(json.dumps(recorded), encoding="utf-8")

        accelerator.register_save_state_pre_hook(write_train_state)
        steps_from_state = None
        if self.args.resume is not None:
            accelerator.load_state(str(self.args.resume))
            saved = json.loads((self.args.resume / TRAIN_STATE_FILE).read_text(encoding="utf-8"))
            steps_from_state = int(saved["current_step"])
            print(f"load train state from {self.args.resume}: {saved}", flush=True)
        engine = self._engine_run(steps_from_state)
        try:
            first = start(engine)
        except EngineAssertion as error:
            print(f"AssertionError: {error}", flush=True)
            return 1
        steps_per_epoch = engine.steps_per_epoch
        print(
            f"epoch {first.epoch_to_start + 1}/{engine.num_train_epochs}: global_step starts at "
            f"{first.global_step}, skipping {first.skip_batches} batches",
            flush=True,
        )
        loss_average: float | None = None
        step_started = time.monotonic()
        trained = 0
        for event in events(engine, self.args.output_name):
            if isinstance(event, OptimizerStep):
                run_step = event.run_step(steps_per_epoch)
                if stop():  # checked before a step, so the save that follows a step is always finished
                    print(f"stopped after {run_step - 1} of {self.total_steps} steps", flush=True)
                    return EXIT_STOPPED
                loss = self._loss(self._batch(run_step - 1), latents, run_step - 1)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
                trained += 1
                loss_average = loss.item() if loss_average is None else 0.9 * loss_average + 0.1 * loss.item()
                sec_per_step = (time.monotonic() - step_started) / trained
                print(
                    format_metric_line(
                        TrainingProgress(
                            step=run_step,
                            total_steps=self.total_steps,
                            epoch=event.epoch,
                            loss=loss_average,
                            lr=self.learning_rate,
                            sec_per_step=sec_per_step,
                            eta_seconds=round(sec_per_step * (self.total_steps - run_step)),
                        )
                    ),
                    flush=True,
                )
                if event.step_in_epoch == steps_per_epoch or event.global_step >= engine.max_train_steps:
                    self._epoch_end(event.epoch, final=event.epoch == engine.num_train_epochs)
            elif isinstance(event, Save):
                recorded.update(current_epoch=event.current_epoch, current_step=event.current_step)
                self._save(accelerator, event)
            else:
                self._save_lora(event.model_file, event.epoch, event.global_step)
        return 0

    def _save(self, accelerator: Accelerator, save: Save) -> None:
        output_dir: Path = self.args.output_dir
        if save.model_file is not None:
            self._save_lora(save.model_file, save.current_epoch, save.global_step)
        print(
            f"saving state at epoch {save.current_epoch} step {save.current_step}: {save.state_dir}",
            flush=True,
        )
        accelerator.save_state(str(output_dir / save.state_dir))
        for name in save.removed_models:
            (output_dir / name).unlink(missing_ok=True)
        for name in save.removed_states:
            if (output_dir / name).is_dir():
                shutil.rmtree(output_dir / name)

    def _save_lora(self, file_name: str, epoch: int, steps: int) -> None:
        dtype = getattr(torch, SAVE_DTYPES.get(str(self.config.get("save_precision", "float")), "float32"))
        layers = int(UNET_CONFIG["layers_per_block"])
        weights = kohya_state_dict(peft_lora_weights(self.model.unet), "unet", self.alpha, layers, dtype)
        if not self.unet_only:
            for part, encoder in (("te1", self.model.text_encoder), ("te2", self.model.text_encoder_2)):
                weights |= kohya_state_dict(peft_lora_weights(encoder), part, self.alpha, layers, dtype)
        metadata = metadata_for(
            self.config,
            self.args,
            self.images,
            rank=self.rank,
            alpha=self.alpha,
            steps=steps,
            epoch=epoch,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            started_at=self.started_at,
            unet_only=self.unet_only,
        )
        self.args.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.args.output_dir / file_name
        save_file(weights, str(path), metadata=metadata)
        print(f"saving checkpoint: {path}", flush=True)

    def _render_samples(self, epoch: int) -> None:
        prompts = [
            _PROMPT_OPTION.sub("", line).strip()
            for line in self.args.sample_prompts.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        ]
        pipeline = self.model.pipeline()
        pipeline.set_progress_bar_config(disable=True)
        sample_dir = self.args.output_dir / "sample"
        sample_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d%H%M%S", time.localtime())
        for index, prompt in enumerate(prompts):
            generator = torch.Generator().manual_seed(self.seed + index)
            image = pipeline(
                prompt, num_inference_steps=2, height=IMAGE_SIZE, width=IMAGE_SIZE, generator=generator
            ).images[0]
            # train_util.sample_image_inference's name for an epoch's sample.
            image.save(sample_dir / f"{self.args.output_name}_e{epoch:06d}_{index:02d}_{stamp}.png")
        print(f"epoch {epoch}: {len(prompts)} sample image(s) written to {sample_dir}", flush=True)
