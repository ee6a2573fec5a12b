"""sd-scripts v0.10.1's epoch, step and save arithmetic, resume included, as a sequence of events.

The smoke trainer follows it, so a smoke job is saved, interrupted and resumed the way real sd-scripts is; the
resume tests replay it against the entrypoint's choice of state. Everything mirrors
`NetworkTrainer.train` in train_network.py and the save helpers in library/train_util.py of v0.10.1:

- steps to skip: `--initial_step` wins over the state's `current_step` (the "calculate steps to skip" block);
  `max_train_steps > initial_step` is asserted; with `--skip_until_initial_step` the steps are multiplied by
  the gradient accumulation and divided by the optimizer steps per epoch to find the first epoch, otherwise
  only the first epoch moves and nothing is skipped;
- `global_step` starts at what is left after subtracting one epoch's batches per skipped epoch (the
  "training loop" block before the progress bar), so after a resume it counts from the resumed epoch's start;
- the progress bar's total is `max_train_steps` less that remainder;
- `current_step` (train_state.json, `save_model_hook`) is `global_step` at the start of the batch being
  trained, plus one; `current_epoch` is the epoch loop's own 1-based number;
- a step save (model, then state, then pruning) fires when `global_step % save_every_n_steps == 0`; the loop
  leaves the epoch once `global_step >= max_train_steps`; an epoch save fires for every `save_every_n_epochs`
  epoch except the last; at the end the `<name>-state` save comes before the final model
  (`save_state_on_train_end`, then `save_model`);
- pruning: `get_remove_epoch_no`, `get_remove_step_no`, `save_and_remove_state_on_epoch_end`,
  `save_and_remove_state_stepwise` in library/train_util.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EngineRun:
    """One launch of sdxl_train_network.py as far as steps and saves go (None = the option is not given)."""

    batches_per_epoch: int
    max_train_steps: int
    gradient_accumulation_steps: int = 1
    save_every_n_epochs: int | None = None
    save_every_n_steps: int | None = None
    save_last_n_epochs: int | None = None
    save_last_n_epochs_state: int | None = None
    save_last_n_steps: int | None = None
    save_last_n_steps_state: int | None = None
    steps_from_state: int | None = None
    initial_step: int | None = None
    skip_until_initial_step: bool = False

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.gradient_accumulation_steps)

    @property
    def num_train_epochs(self) -> int:
        return math.ceil(self.max_train_steps / self.steps_per_epoch)


@dataclass(frozen=True)
class Start:
    epoch_to_start: int  # 0-based, as the epoch loop counts
    global_step: int
    skip_batches: int  # batches of the first epoch loaded and thrown away
    bar_total: int


@dataclass(frozen=True)
class OptimizerStep:
    epoch: int  # 1-based
    step_in_epoch: int  # 1-based: optimizer steps made in this epoch so far
    global_step: int  # sd-scripts' own count after this step

    def run_step(self, steps_per_epoch: int) -> int:
        """The step's number counted from the start of the whole run (what sd-scripts no longer knows)."""
        return (self.epoch - 1) * steps_per_epoch + self.step_in_epoch


SaveKind = Literal["step", "epoch", "final"]


@dataclass(frozen=True)
class Save:
    kind: SaveKind
    model_file: str | None  # the LoRA written just before the state; None for the final state
    state_dir: str
    current_epoch: int
    current_step: int
    global_step: int
    removed_models: tuple[str, ...]
    removed_states: tuple[str, ...]


@dataclass(frozen=True)
class FinalModel:
    model_file: str
    epoch: int
    global_step: int


Event = OptimizerStep | Save | FinalModel


class EngineAssertion(AssertionError):
    """The assertion sd-scripts fails with (the job exits non-zero)."""


def start(run: EngineRun) -> Start:
    initial = 0
    if run.initial_step is not None:
        initial = run.initial_step
    elif run.steps_from_state is not None:
        initial = run.steps_from_state
    if initial > 0 and not run.max_train_steps > initial:
        raise EngineAssertion(
            f"max_train_steps should be greater than initial step: {run.max_train_steps} vs {initial}"
        )
    epoch_to_start = 0
    if initial > 0:
        if run.skip_until_initial_step:
            initial *= run.gradient_accumulation_steps
            epoch_to_start = initial // run.steps_per_epoch
        else:
            epoch_to_start = initial // run.steps_per_epoch
            initial = 0
    global_step = 0
    if initial > 0:
        initial -= epoch_to_start * run.batches_per_epoch
        global_step = initial
    return Start(epoch_to_start, global_step, max(initial, 0), run.max_train_steps - initial)


def _names(output_name: str) -> dict[str, str]:
    return {
        "epoch_state": output_name + "-{:06d}-state",
        "step_state": output_name + "-step{:08d}-state",
        "epoch_model": output_name + "-{:06d}.safetensors",
        "step_model": output_name + "-step{:08d}.safetensors",
    }


def events(run: EngineRun, output_name: str) -> Iterator[Event]:
    """Everything one launch does, in order; raises `EngineAssertion` before any step where sd-scripts does."""
    names = _names(output_name)
    begin = start(run)
    global_step = begin.global_step
    skip = begin.skip_batches
    current_step = 0
    epochs = run.num_train_epochs
    accumulation = run.gradient_accumulation_steps
    for epoch in range(begin.epoch_to_start, epochs):
        made_in_epoch = 0
        for batch in range(run.batches_per_epoch):
            current_step = global_step
            if skip > 0:
                skip -= 1
                continue
            syncs = (batch + 1) % accumulation == 0 or batch + 1 == run.batches_per_epoch
            if syncs:
                global_step += 1
                made_in_epoch = batch // accumulation + 1
                yield OptimizerStep(epoch + 1, made_in_epoch, global_step)
                every = run.save_every_n_steps
                if every is not None and global_step % every == 0:
                    yield _step_save(run, names, global_step, epoch + 1, current_step + 1)
            if global_step >= run.max_train_steps:
                break
        skip = 0
        every_epochs = run.save_every_n_epochs
        if every_epochs is not None and (epoch + 1) % every_epochs == 0 and epoch + 1 < epochs:
            yield _epoch_save(run, names, epoch + 1, current_step + 1, global_step)
    yield Save("final", None, f"{output_name}-state", epochs, current_step + 1, global_step, (), ())
    yield FinalModel(f"{output_name}.safetensors", epochs, global_step)


def _step_to_remove(step: int, last_n: int, every: int) -> int:
    """The step save that falls out of the last `last_n` (train_util.get_remove_step_no; the state's copy in
    save_and_remove_state_stepwise removes it only when above 0, the model's when at least 0)."""
    old = step - last_n - 1
    return old - old % every


def _step_save(run: EngineRun, names: dict[str, str], step: int, epoch: int, current_step: int) -> Save:
    every = run.save_every_n_steps or 1
    removed_states: tuple[str, ...] = ()
    last_n = run.save_last_n_steps_state or run.save_last_n_steps
    if last_n is not None and (old := _step_to_remove(step, last_n, every)) > 0:
        removed_states = (names["step_state"].format(old),)
    removed_models: tuple[str, ...] = ()
    if (
        run.save_last_n_steps is not None
        and (old := _step_to_remove(step, run.save_last_n_steps, every)) >= 0
    ):
        removed_models = (names["step_model"].format(old),)
    return Save(
        "step",
        names["step_model"].format(step),
        names["step_state"].format(step),
        epoch,
        current_step,
        step,
        removed_models,
        removed_states,
    )


def _epoch_save(
    run: EngineRun, names: dict[str, str], epoch: int, current_step: int, global_step: int
) -> Save:
    every = run.save_every_n_epochs or 1
    removed_models: tuple[str, ...] = ()
    if run.save_last_n_epochs is not None and epoch - every * run.save_last_n_epochs >= 0:
        removed_models = (names["epoch_model"].format(epoch - every * run.save_last_n_epochs),)
    last_n = run.save_last_n_epochs_state or run.save_last_n_epochs
    removed_states = (names["epoch_state"].format(epoch - every * last_n),) if last_n is not None else ()
    return Save(
        "epoch",
        names["epoch_model"].format(epoch),
        names["epoch_state"].format(epoch),
        epoch,
        current_step,
        global_step,
        removed_models,
        removed_states,
    )
