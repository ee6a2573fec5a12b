"""`make kohya-check`: real sd-scripts trains a few steps on the CPU through the product's own entrypoint.

What runs, in order:
1. the bluebot example dataset (2 images, 256 px, 1 repeat) is validated by `lora_pipeline.validate`; the
   effective kohya.toml and prompts.txt it writes, and the hyperparameters `training_job_spec` sends, are laid
   out as SageMaker lays out /opt/ml;
2. `container/train` (trainer `kohya`) runs in `.venv-kohya` and launches sd-scripts' `sdxl_train_network.py`
   through `accelerate`, on a random-weight model with the full SDXL 1.0 architecture (`sdxl_random`) and CLIP
   tokenizers built offline (`--tokenizer_cache_dir`);
3. once sd-scripts has saved the first epoch's state, the entrypoint gets SIGTERM, as on a spot interruption;
   a second run of the same tree resumes from that state and finishes;
4. the model folder is packed as SageMaker packs `model.tar.gz`, then unpacked and verified by
   `lora_pipeline.model_archive` into `out/kohya-check/<name>.safetensors` and `manifest.json`;
5. Diffusers loads the LoRA into the same base model, in this venv's diffusers and in the image's.

Last line: `kohya-check: <modules> modules, <steps> steps, resumed at step <n>, <k> samples, <s> s`.
Exit code 0 when every check passed, 1 otherwise (the failed check is printed).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kohya_check.job import (
    DATASET,
    REPO,
    RUN_ID,
    TRIGGER,
    CheckFailed,
    job_environment,
    lay_out_opt_ml,
    log,
    prepare_engine_inputs,
    require,
    run_entrypoint,
    run_module,
    write_dataset,
)
from lora_pipeline.manifest import RunFacts, build_manifest
from lora_pipeline.model_archive import LocalFolderSink, UnpackResult, unpack_model_archive
from lora_pipeline.training_metrics import TrainingProgress, parse_metric_line
from lora_trainer.sagemaker_env import OptMl
from lora_trainer.workspace import find_resume_state

SDXL_UNET_MODULES = 722
SDXL_TEXT_ENCODER_MODULES = 264
CHECK_CONFIG = """\
# kohya-check: a few real optimizer steps of the full-size SDXL U-Net on a CPU.
resolution = "256,256"
max_train_epochs = 3
train_batch_size = 1
network_dim = 4
network_alpha = 2
learning_rate = 1e-4
mixed_precision = "no"
network_train_unet_only = false
cache_latents = true
"""
CHECK_SETTINGS = f"""\
trainer = "kohya"
output_name = "{TRIGGER}"
sample_prompts = ["a photo of {TRIGGER} standing on grass --w 256 --h 256 --s 2"]
"""
EXIT_STOPPED = 143
# Two spot interruptions in a row, each right after an epoch's state is saved.
INTERRUPT_AFTER_EPOCHS = (1, 2)


def state_saved(opt_ml: Path, epoch: int) -> Callable[[], bool]:
    """True once sd-scripts has completely saved the state of `epoch` (the moment a spot stop costs nothing)."""

    def saved() -> bool:
        resume = find_resume_state(OptMl(opt_ml).checkpoints_dir, TRIGGER)
        if resume is not None and resume.state.epoch >= epoch:
            log(f"{resume.state.directory.name} is saved: SIGTERM, as on a spot interruption")
            return True
        return False

    return saved


def resumed_step(lines: Sequence[str]) -> int:
    """The step the entrypoint resumed at, as it logs it ('resuming from ... (epoch E, S of T steps done)')."""
    for line in lines:
        found = re.search(r"resuming from \S+ \(epoch \d+, (\d+) of \d+ steps done\)", line)
        if found:
            return int(found.group(1))
    raise CheckFailed("the second run did not resume from a saved state")


def steps_done(lines: Sequence[str]) -> TrainingProgress:
    """The last progress the entrypoint reported ('lora-metrics step=S/T ...': done of planned total)."""
    reported = [progress for progress in map(parse_metric_line, lines) if progress is not None]
    require(bool(reported), "the resumed run reported no progress")
    return reported[-1]


def final_state_epoch(checkpoints: Path, output_name: str) -> int:
    """The epoch sd-scripts itself records in the state it saves at the end (`<name>-state/train_state.json`)."""
    state = checkpoints / f"{output_name}-state" / "train_state.json"
    require(state.is_file(), f"sd-scripts saved no final state ({state.name} is missing)")
    return int(json.loads(state.read_text())["current_epoch"])


def pack_model_archive(model_dir: Path, archive: Path) -> Path:
    """`model.tar.gz` as SageMaker packs /opt/ml/model at the end of a job."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    return archive


def unpack(archive: Path, out: Path, output_name: str) -> UnpackResult:
    """The unpack step's own code: the LoRA, the kept epoch LoRAs, the samples and manifest.json into `out`."""
    shutil.rmtree(out, ignore_errors=True)
    for folder in (out, out / "epochs", out / "samples"):
        folder.mkdir(parents=True)
    with archive.open("rb") as stream:
        result = unpack_model_archive(
            stream,
            LocalFolderSink(out),
            output_name=output_name,
            epoch_sink=LocalFolderSink(out / "epochs"),
            sample_sink=LocalFolderSink(out / "samples"),
        )
    manifest = build_manifest(
        result,
        model_uri=str(out / result.name),
        archive_uri=str(archive),
        run=RunFacts(dataset=DATASET, run_id=RUN_ID),
    )
    (out / "manifest.json").write_bytes(manifest.to_json())
    return result


def check_lora(result: UnpackResult) -> int:
    """Module counts and sd-scripts' metadata of an SDXL LoRA trained on both text encoders; returns modules."""
    summary = result.summary
    require(
        summary.unet_modules == SDXL_UNET_MODULES,
        f"{result.name} has {summary.unet_modules} U-Net modules, not {SDXL_UNET_MODULES}",
    )
    require(
        summary.text_encoder_modules == SDXL_TEXT_ENCODER_MODULES,
        f"{result.name} has {summary.text_encoder_modules} text-encoder modules, not {SDXL_TEXT_ENCODER_MODULES}",
    )
    for key, wanted in (("ss_network_module", "networks.lora"), ("ss_base_model_version", "sdxl_base_v1-0")):
        require(result.metadata.get(key) == wanted, f"{key} = {result.metadata.get(key)!r}, not {wanted!r}")
    for key in ("ss_steps", "ss_epoch", "ss_network_dim", "ss_network_alpha"):
        require(key in result.metadata, f"sd-scripts' {key} metadata is missing")
    return summary.unet_modules + summary.text_encoder_modules


def check_diffusers_load(python: Path, base_model: Path, lora: Path, environment: dict[str, str]) -> None:
    line = run_module(python, ["-m", "kohya_check.diffusers_load", str(base_model), str(lora)], environment)
    log(f"{python.parent.parent.name}: {line}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kohya-check", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--kohya-python", type=Path, default=REPO / ".venv-kohya" / "bin" / "python")
    parser.add_argument("--sd-scripts", type=Path, default=REPO / "build" / "sd-scripts")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "kohya-check")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "kohya-check")
    parser.add_argument("--model-cache", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.monotonic()
    kohya_python = args.kohya_python.absolute()
    work = args.work.absolute()
    opt_ml = work / "opt-ml"
    layout = OptMl(opt_ml)
    environment = job_environment(opt_ml, args.sd_scripts.absolute(), work)
    try:
        base_model = prepare_engine_inputs(kohya_python, environment, args.model_cache)
        dataset = write_dataset(
            work / "dataset", config=CHECK_CONFIG, settings=CHECK_SETTINGS, images=2, size=256
        )
        plan = lay_out_opt_ml(dataset, opt_ml, base_model)
        runs, resumed_at = [], []
        for epoch in INTERRUPT_AFTER_EPOCHS:
            log(f"run {len(runs) + 1}: SIGTERM once the state of epoch {epoch} is saved")
            stopped = run_entrypoint(kohya_python, environment, stop_when=state_saved(opt_ml, epoch))
            require(
                stopped.exit_code == EXIT_STOPPED,
                f"run {len(runs) + 1} exited {stopped.exit_code}, not {EXIT_STOPPED}",
            )
            runs.append(stopped)
            if len(runs) > 1:
                resumed_at.append(resumed_step(stopped.lines))
        log(f"run {len(runs) + 1}: the restarted job resumes from sd-scripts' saved state and finishes")
        last = run_entrypoint(kohya_python, environment)
        require(last.exit_code == 0, f"the last run exited {last.exit_code}")
        runs.append(last)
        resumed_at.append(resumed_step(last.lines))
        expected_starts = [epoch * plan.steps_per_epoch for epoch in INTERRUPT_AFTER_EPOCHS]
        require(
            resumed_at == expected_starts,
            f"the restarts resumed at steps {resumed_at}; each should start where the saved epoch ended "
            f"({expected_starts}), so that no epoch is trained twice or skipped",
        )
        progress = steps_done(last.lines)
        steps = progress.step
        require(
            (progress.step, progress.total_steps) == (plan.total_steps, plan.total_steps),
            f"training ended at step {progress.step}/{progress.total_steps}; the plan said {plan.total_steps}",
        )
        epoch = final_state_epoch(layout.checkpoints_dir, TRIGGER)
        require(
            epoch == plan.epochs, f"sd-scripts recorded epoch {epoch} at the end; the plan said {plan.epochs}"
        )
        archive = pack_model_archive(layout.model_dir, work / "model.tar.gz")
        result = unpack(archive, args.out.absolute(), TRIGGER)
        modules = check_lora(result)
        samples = sorted((args.out.absolute() / "samples").glob("*.png"))
        require(len(samples) > 0, "no sample image sd-scripts rendered reached the unpacked results")
        epochs = sorted((args.out.absolute() / "epochs").glob("*.safetensors"))
        require(
            len(epochs) == plan.epochs - 1,
            f"{len(epochs)} epoch LoRAs were published with the final one; {plan.epochs - 1} were trained",
        )
        lora = args.out.absolute() / result.name
        check_diffusers_load(Path(sys.executable), base_model, lora, environment)
        check_diffusers_load(kohya_python, base_model, lora, environment)
    except (CheckFailed, subprocess.CalledProcessError) as failure:
        log(f"FAILED: {failure}")
        return 1
    peak = max(run.peak_memory_bytes for run in runs)
    log(f"peak memory of the training processes (PSS): {peak / 2**30:.1f} GiB")
    print(
        f"kohya-check: {modules} modules, {steps} steps, resumed at step "
        f"{', '.join(map(str, resumed_at))}, {len(samples)} samples, {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
