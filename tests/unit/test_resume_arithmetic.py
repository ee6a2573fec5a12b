"""Spot interruptions at every point, replayed against sd-scripts v0.10.1's own step arithmetic.

`lora_trainer.sd_scripts_schedule` mirrors train_network.py `NetworkTrainer.train` (the "calculate steps to
skip" block, the `global_step` set before the progress bar, the batch loop's save and stop checks, the epoch
save and `save_state_on_train_end`) and library/train_util.py's state names and pruning. Each launch below
writes its states exactly as sd-scripts lays them out (`<name>-<epoch:06d>-state`, `<name>-step<step:08d>-state`,
`<name>-state`; train_state.json; accelerate's model/optimizer/scheduler/random-state files; the LoRA saved just
before each state, with the `ss_*` keys sd-scripts writes), and the next launch gets the options the entrypoint
chooses from that folder. The checks count the optimizer steps actually run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lora_trainer.sd_scripts_schedule import (
    EngineAssertion,
    EngineRun,
    Event,
    FinalModel,
    OptimizerStep,
    Save,
    events,
    start,
)
from lora_trainer.workspace import (
    ResumePoint,
    find_resume_state,
    newest_epoch_lora,
    read_training_shape,
    save_in_progress,
)
from tests.lora_files import kohya_metadata, lora_tensors, safetensors_bytes

NAME = "bluebot"
# accelerate's save_state for sd-scripts' network: one model, one optimizer, one scheduler, the RNG states last.
ACCELERATE_FILES = ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl")


def _lora(engine: EngineRun, epoch: int, steps: int) -> bytes:
    metadata = kohya_metadata(output_name=NAME) | {
        "ss_num_batches_per_epoch": str(engine.batches_per_epoch),
        "ss_gradient_accumulation_steps": str(engine.gradient_accumulation_steps),
        "ss_max_train_steps": str(engine.max_train_steps),
        "ss_num_epochs": str(engine.num_train_epochs),
        "ss_epoch": str(epoch),
        "ss_steps": str(steps),
    }
    return safetensors_bytes(lora_tensors(rank=1, text_encoders=False), metadata)


def _write(checkpoints: Path, engine: EngineRun, event: Event) -> None:
    if isinstance(event, FinalModel):
        (checkpoints / event.model_file).write_bytes(_lora(engine, event.epoch, event.global_step))
        return
    assert isinstance(event, Save)
    if event.model_file is not None:
        (checkpoints / event.model_file).write_bytes(_lora(engine, event.current_epoch, event.global_step))
    state = checkpoints / event.state_dir
    state.mkdir(exist_ok=True)
    train_state = {"current_epoch": event.current_epoch, "current_step": event.current_step}
    (state / "train_state.json").write_text(json.dumps(train_state))
    for name in ACCELERATE_FILES:
        (state / name).write_bytes(b"x")
    for name in event.removed_models:
        (checkpoints / name).unlink(missing_ok=True)
    for name in event.removed_states:
        if (checkpoints / name).is_dir():
            shutil.rmtree(checkpoints / name)


# An interruption: called after each event of a launch; True stops the launch right there.
Stop = Callable[[Event], bool]


def after_run_step(step: int, steps_per_epoch: int) -> Stop:
    return lambda e: isinstance(e, OptimizerStep) and e.run_step(steps_per_epoch) == step


def after_epoch_state(epoch: int) -> Stop:
    return lambda e: isinstance(e, Save) and e.kind == "epoch" and e.current_epoch == epoch


def after_final_state() -> Stop:
    return lambda e: isinstance(e, Save) and e.kind == "final"


@dataclass
class Job:
    """One SageMaker job: launches of sd-scripts on one checkpoints folder, restarted after each stop."""

    checkpoints: Path
    engine: EngineRun
    launches: list[ResumePoint | None] = field(default_factory=list)
    trained: list[tuple[int, int]] = field(default_factory=list)  # (epoch, step in epoch) of each step run

    def launch(self, stop: Stop | None = None) -> bool:
        """One launch from what the entrypoint chooses; True when it wrote the final LoRA."""
        resume = find_resume_state(self.checkpoints, NAME)
        self.launches.append(resume)
        engine = self.engine
        if resume is not None:
            state = json.loads((resume.state.directory / "train_state.json").read_text())
            options = resume.trainer_arguments()
            engine = EngineRun(
                **{
                    **engine.__dict__,
                    "steps_from_state": state["current_step"],
                    "initial_step": int(options[options.index("--initial_step") + 1])
                    if "--initial_step" in options
                    else None,
                    "skip_until_initial_step": "--skip_until_initial_step" in options,
                }
            )
        for event in events(engine, NAME):
            if isinstance(event, OptimizerStep):
                self.trained.append((event.epoch, event.step_in_epoch))
            else:
                _write(self.checkpoints, engine, event)
            if stop is not None and stop(event):
                return False
        return True

    def run_steps(self) -> list[int]:
        per_epoch = self.engine.steps_per_epoch
        return [(epoch - 1) * per_epoch + step for epoch, step in self.trained]


def _engine(**overrides: object) -> EngineRun:
    """The 10 x 100 example with the entrypoint's own saving (kohya_command.training_config)."""
    values: dict[str, object] = {
        "batches_per_epoch": 100,
        "max_train_steps": 1000,
        "save_every_n_epochs": 1,
        "save_last_n_epochs_state": 2,
    }
    values.update(overrides)
    return EngineRun(**values)  # type: ignore[arg-type]


def _assert_each_step_once(job: Job) -> None:
    steps = job.run_steps()
    assert sorted(steps) == list(range(1, job.engine.max_train_steps + 1)), (
        f"{len(steps)} optimizer steps run for {job.engine.max_train_steps} planned"
    )
    assert (job.checkpoints / f"{NAME}.safetensors").is_file()


def test_the_model_reproduces_the_reported_second_resume_of_sd_scripts_alone(tmp_path: Path) -> None:
    """What happens without the entrypoint's start step: sd-scripts takes `current_step` from the state,
    and after the first resume that step counts from the resumed epoch (issue: 1,300 steps for 1,000)."""
    engine = _engine()
    trained = []
    for event in events(engine, NAME):
        if isinstance(event, OptimizerStep):
            trained.append(event)
        if isinstance(event, Save) and event.kind == "epoch" and event.current_epoch == 3:
            assert event.current_step == 300
            break
    resumed = EngineRun(**{**engine.__dict__, "steps_from_state": 300, "skip_until_initial_step": True})
    assert start(resumed).global_step == 0, "train_network.py restarts global_step inside the resumed epoch"
    epoch_5 = None
    for event in events(resumed, NAME):
        if isinstance(event, OptimizerStep):
            trained.append(event)
        if isinstance(event, Save) and event.kind == "epoch" and event.current_epoch == 5:
            epoch_5 = event
            break
    assert epoch_5 is not None and (epoch_5.current_epoch, epoch_5.current_step) == (5, 200)
    again = EngineRun(**{**engine.__dict__, "steps_from_state": 200, "skip_until_initial_step": True})
    assert start(again).epoch_to_start == 2, "step 200 sends sd-scripts back to epoch 3"
    trained += [e for e in events(again, NAME) if isinstance(e, OptimizerStep)]
    assert len(trained) == 1300


def test_two_interruptions_after_epochs_3_and_5_cost_no_step_twice(tmp_path: Path) -> None:
    job = Job(tmp_path, _engine())
    assert not job.launch(after_epoch_state(3))
    assert not job.launch(after_epoch_state(5))
    assert job.launch()

    _assert_each_step_once(job)
    first, second, third = job.launches
    assert first is None
    assert second is not None and (second.state.directory.name, second.initial_step) == (
        "bluebot-000003-state",
        300,
    )
    assert third is not None and (third.state.directory.name, third.initial_step) == (
        "bluebot-000005-state",
        500,
    )
    assert not third.skip_batches, "an epoch boundary needs no batches skipped"
    assert [len([s for s in job.trained if s[0] == epoch]) for epoch in range(1, 11)] == [100] * 10


def test_the_progress_bar_of_a_resumed_launch_adds_up_to_the_planned_total(tmp_path: Path) -> None:
    job = Job(tmp_path, _engine())
    job.launch(after_epoch_state(3))
    resume = find_resume_state(tmp_path, NAME)
    assert resume is not None
    resumed = EngineRun(**{**_engine().__dict__, "initial_step": resume.initial_step})
    bar = start(resumed)
    steps_in_launch = len([e for e in events(resumed, NAME) if isinstance(e, OptimizerStep)])
    assert resume.completed_steps + steps_in_launch == resume.total_steps == 1000
    assert bar.bar_total == 1000, "without skipping, sd-scripts' bar total is max_train_steps"


@pytest.mark.parametrize("interruptions", [[375], [350, 730], [160, 455, 999]])
def test_mid_epoch_interruptions_resume_from_step_states_exactly(
    tmp_path: Path, interruptions: list[int]
) -> None:
    engine = _engine(save_every_n_steps=50, save_last_n_steps_state=100)
    job = Job(tmp_path, engine)
    for step in interruptions:
        assert not job.launch(after_run_step(step, engine.steps_per_epoch))
    assert job.launch()

    steps = job.run_steps()
    # The steps since the newest save (a stop lands after a step, before that step's own save) are lost with
    # the instance and run again; nothing else is.
    lost = [(step - 1) % 50 + 1 for step in interruptions]
    assert len(steps) == 1000 + sum(lost)
    assert set(steps) == set(range(1, 1001))
    resumed = [p for p in job.launches if p is not None]
    assert [p.initial_step for p in resumed] == [
        step - n for step, n in zip(interruptions, lost, strict=True)
    ]


def test_a_stop_right_after_a_mid_epoch_step_state_loses_nothing(tmp_path: Path) -> None:
    engine = _engine(save_every_n_steps=50, save_last_n_steps_state=100)
    job = Job(tmp_path, engine)
    job.launch(lambda e: isinstance(e, Save) and e.kind == "step" and e.global_step == 350)
    resume = find_resume_state(tmp_path, NAME)
    assert resume is not None and resume.skip_batches and resume.initial_step == 350
    begin = start(EngineRun(**{**engine.__dict__, "initial_step": 350, "skip_until_initial_step": True}))
    assert (begin.epoch_to_start, begin.skip_batches, begin.global_step) == (3, 50, 50)
    job.launch(lambda e: isinstance(e, Save) and e.kind == "step" and e.current_epoch == 6)
    assert job.launch()
    _assert_each_step_once(job)


def test_a_stop_between_the_final_state_and_the_final_lora_redoes_only_the_last_epoch(tmp_path: Path) -> None:
    job = Job(tmp_path, _engine())
    assert not job.launch(after_final_state())
    assert (tmp_path / "bluebot-state").is_dir() and not (tmp_path / "bluebot.safetensors").exists()

    assert job.launch(), "no `max_train_steps > initial_step` assertion"

    resume = job.launches[1]
    assert resume is not None and resume.state.directory.name == "bluebot-000009-state"
    assert len(job.run_steps()) == 1100 and set(job.run_steps()) == set(range(1, 1001))


def test_the_final_state_is_held_against_sigterm_until_the_final_lora_is_written(tmp_path: Path) -> None:
    Job(tmp_path, _engine(max_train_steps=200, batches_per_epoch=100)).launch(after_final_state())
    assert save_in_progress(tmp_path, NAME)
    (tmp_path / "bluebot.safetensors").write_bytes(b"lora")
    assert not save_in_progress(tmp_path, NAME)


def test_resuming_from_the_final_state_is_what_sd_scripts_refuses() -> None:
    engine = _engine()
    final = next(e for e in events(engine, NAME) if isinstance(e, Save) and e.kind == "final")
    with pytest.raises(EngineAssertion, match="max_train_steps should be greater than initial step"):
        start(EngineRun(**{**engine.__dict__, "steps_from_state": final.current_step}))


def test_max_runtime_leaves_the_newest_epoch_lora_for_salvage(tmp_path: Path) -> None:
    engine = _engine()
    job = Job(tmp_path, engine)
    assert not job.launch(after_run_step(950, engine.steps_per_epoch))  # MaxRuntime: no restart follows

    newest = newest_epoch_lora(tmp_path, NAME)
    assert newest is not None and (newest[0].name, newest[1]) == ("bluebot-000009.safetensors", 9)
    shape = read_training_shape(tmp_path)
    assert shape is not None and (shape.total_steps, shape.steps_per_epoch) == (1000, 100)
    assert len(job.run_steps()) == 950


def test_gradient_accumulation_resumes_at_epoch_boundaries_only(tmp_path: Path) -> None:
    """train_network.py multiplies the steps to skip by gradient_accumulation_steps and then divides by the
    optimizer steps per epoch, so a mid-epoch skip lands in the wrong epoch; epoch starts are exact."""
    engine = _engine(
        batches_per_epoch=100, gradient_accumulation_steps=2, max_train_steps=500, save_every_n_steps=20
    )
    mid_epoch_2 = start(EngineRun(**{**engine.__dict__, "initial_step": 70, "skip_until_initial_step": True}))
    assert mid_epoch_2.epoch_to_start == 2 and mid_epoch_2.skip_batches == 0, (
        "lands in epoch 3, skips nothing"
    )
    assert start(EngineRun(**{**engine.__dict__, "initial_step": 50})).epoch_to_start == 1
    job = Job(tmp_path, engine)
    assert not job.launch(after_run_step(170, engine.steps_per_epoch))
    assert not job.launch(after_run_step(330, engine.steps_per_epoch))
    assert job.launch()

    resumed = [p for p in job.launches if p is not None]
    assert [(p.initial_step, p.skip_batches) for p in resumed] == [(150, False), (300, False)]
    assert set(job.run_steps()) == set(range(1, 501))
    assert len(job.run_steps()) == 500 + 20 + 30


def test_an_uneven_last_epoch_after_a_resume_is_noted_as_sd_scripts_runs_it(tmp_path: Path) -> None:
    """max_train_steps that is not a whole number of epochs: after any resume sd-scripts' relative
    global_step never reaches it, so the last epoch runs to its end (train_network.py's stop check)."""
    engine = _engine(max_train_steps=950)
    job = Job(tmp_path, engine)
    job.launch(after_epoch_state(4))
    job.launch()
    assert len(job.run_steps()) == 1000
