"""The SageMaker training entrypoint: read the contract, run a trainer, and only report success with a LoRA.

Exit codes: 0 the LoRA is in `model/`; 1 training failed (the reason is in `output/failure`); 2 the inputs do
not fit the contract (reason in `output/failure`); 143 stopped by SIGTERM after letting a state save finish (a
restarted spot job resumes from the newest complete state in `checkpoints/`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import lora_pipeline
import lora_trainer
from lora_pipeline.safetensors_lora import Architecture, LoraFormatError, inspect_lora_file
from lora_pipeline.training_metrics import LOSS_LOG_NAME
from lora_trainer.kohya_command import (
    KohyaRun,
    base_model_for,
    build_kohya_command,
    read_kohya_config,
    write_training_config,
)
from lora_trainer.sagemaker_env import ContractError, JobInputs, OptMl, read_job_inputs
from lora_trainer.trainer_output import TrainerOutput
from lora_trainer.workspace import (
    ResumePoint,
    copy_dataset,
    find_resume_state,
    incomplete_states,
    newest_epoch_lora,
    read_training_shape,
    save_in_progress,
    write_sample_prompts,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 143
FAILURE_LIMIT = 1000  # SageMaker keeps about 1 KB of the failure file as FailureReason
SD_SCRIPTS_DIR = Path(os.environ.get("SD_SCRIPTS_DIR", "/opt/sd-scripts"))
TOKENIZER_CACHE_DIR = Path(os.environ.get("TOKENIZER_CACHE_DIR", "/opt/tokenizers"))
SAVE_GRACE_SECONDS = 90.0  # how long SIGTERM waits for a save; spot gives two minutes
KILL_GRACE_SECONDS = 20.0


def log(message: str) -> None:
    print(f"[entrypoint] {message}", flush=True)


def count_gpus(device_dir: Path = Path("/dev")) -> int:
    """NVIDIA device files: cheap, and correct inside SageMaker's GPU containers."""
    return len([p for p in device_dir.glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name)])


@dataclass(frozen=True)
class Launch:
    command: list[str]
    environment: dict[str, str]
    resumed_from: ResumePoint | None


def _child_environment(inputs: JobInputs, threads: int, environ: Mapping[str, str]) -> dict[str, str]:
    package_roots = {
        str(Path(lora_trainer.__file__).parent.parent),
        str(Path(lora_pipeline.__file__).parent.parent),
    }
    python_path = os.pathsep.join([*sorted(package_roots), environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    environment = {
        **environ,
        "PYTHONPATH": python_path,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(threads),
    }
    if inputs.base_model_file is not None or inputs.hyperparameters.trainer == "smoke":
        environment["HF_HUB_OFFLINE"] = "1"
    return environment


def plan_launch(opt_ml: OptMl, inputs: JobInputs, environ: Mapping[str, str]) -> Launch:
    """Prepare the scratch files and the trainer command; nothing runs yet."""
    scratch = opt_ml.scratch_dir
    dataset = opt_ml.dataset_copy_dir
    copied = copy_dataset(inputs.dataset_dir, dataset)
    log(
        f"copied {copied} new or changed dataset files to {dataset} (the dataset's own latent caches left behind)"
    )
    config = read_kohya_config(inputs.kohya_config_file)
    config_file = write_training_config(
        config, scratch / "kohya.toml", inputs.hyperparameters.checkpoint_every_n_steps
    )
    prompts = (
        write_sample_prompts(inputs.sample_prompts_file, scratch / "prompts.txt")
        if inputs.sample_prompts_file
        else None
    )
    for broken in incomplete_states(opt_ml.checkpoints_dir):
        log(f"ignoring {broken.name}: the save was cut off before it completed")
    hyperparameters = inputs.hyperparameters
    resume = find_resume_state(opt_ml.checkpoints_dir, hyperparameters.output_name)
    if resume is not None:
        log(f"resuming from {resume.state.directory.name} " + _resume_position(resume))
        shape = read_training_shape(opt_ml.checkpoints_dir)
        if shape is not None and shape.total_steps % shape.steps_per_epoch:
            extra = shape.steps_per_epoch - shape.total_steps % shape.steps_per_epoch
            log(
                f"note: max_train_steps = {shape.total_steps} is not a whole number of {shape.steps_per_epoch}-step "
                "epochs; after a resume sd-scripts v0.10.1 counts steps from the resumed epoch and trains the last "
                f"epoch to its end ({extra} steps more than planned). Set max_train_epochs instead to avoid this."
            )
    gpus = count_gpus()
    processes = max(1, gpus)
    threads = max(1, (os.cpu_count() or 1) // processes)
    if hyperparameters.trainer == "smoke":
        optional = {
            "--max_train_steps": hyperparameters.max_steps,
            "--sample_prompts": prompts,
            "--metadata_trigger_phrase": hyperparameters.trigger_phrase,
        }
        command = [sys.executable, "-m", "lora_trainer.smoke_cli", "--config_file", str(config_file)]
        command += ["--train_data_dir", str(dataset), "--output_dir", str(opt_ml.checkpoints_dir)]
        command += ["--output_name", hyperparameters.output_name]
        command += [str(token) for option, value in optional.items() if value for token in (option, value)]
        command += resume.trainer_arguments() if resume else []
    else:
        if gpus == 0:
            log("WARNING: no GPU found; sd-scripts will train on the CPU, which takes days for SDXL")
        run = KohyaRun(
            sd_scripts_dir=SD_SCRIPTS_DIR,
            train_data_dir=dataset,
            output_dir=opt_ml.checkpoints_dir,
            output_name=hyperparameters.output_name,
            logging_dir=opt_ml.logs_dir,
            tokenizer_cache_dir=TOKENIZER_CACHE_DIR,
            base_model=base_model_for(config, inputs.base_model_file, hyperparameters.base_model),
            sample_prompts=prompts,
            resume=resume,
            num_processes=processes,
            cpu_threads_per_process=threads,
            trigger_phrase=hyperparameters.trigger_phrase,
        )
        command = build_kohya_command(config_file, config, run)
    return Launch(command, _child_environment(inputs, threads, environ), resume)


def _resume_position(resume: ResumePoint) -> str:
    state = resume.state
    if resume.initial_step is None:
        return (
            f"(epoch {state.epoch}, step {state.step} as the state records it: its checkpoints carry no LoRA "
            "metadata to count epochs with)"
        )
    return f"(epoch {state.epoch}, {resume.initial_step} of {resume.total_steps} steps done)"


class _Supervisor:
    """Runs the trainer in its own process group; SIGTERM is passed on once no state save is being written."""

    def __init__(self, checkpoints_dir: Path, output_name: str) -> None:
        self.checkpoints_dir = checkpoints_dir
        self.output_name = output_name
        self.stop_requested_at: float | None = None
        self.forwarded_at: float | None = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested_at is None:
            log("SIGTERM received: stopping the trainer once no state save is in progress")
            self.stop_requested_at = time.monotonic()

    def run(self, launch: Launch, output: TrainerOutput) -> int | None:
        """The trainer's exit code, or None when SIGTERM was passed on to it."""
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        process = subprocess.Popen(
            launch.command,
            env=launch.environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert process.stdout is not None
        reader = threading.Thread(target=_relay, args=(process.stdout.fileno(), output), daemon=True)
        reader.start()
        try:
            while process.poll() is None:
                self._tick(process)
                time.sleep(0.2)
        finally:
            signal.signal(signal.SIGTERM, previous)
        reader.join(timeout=10)
        return None if self.forwarded_at is not None else process.returncode

    def _tick(self, process: subprocess.Popen[bytes]) -> None:
        if self.stop_requested_at is None:
            return
        now = time.monotonic()
        if self.forwarded_at is None:
            if (
                save_in_progress(self.checkpoints_dir, self.output_name)
                and now - self.stop_requested_at < SAVE_GRACE_SECONDS
            ):
                return
            os.killpg(process.pid, signal.SIGTERM)
            self.forwarded_at = now
        elif now - self.forwarded_at > KILL_GRACE_SECONDS:
            os.killpg(process.pid, signal.SIGKILL)


def _relay(fd: int, output: TrainerOutput) -> None:
    pending = b""
    while chunk := os.read(fd, 65536):
        *segments, pending = re.split(rb"[\r\n]", pending + chunk)
        for segment in segments:
            for line in output.lines_for(segment.decode("utf-8", errors="replace")):
                print(line, flush=True)
    for line in output.lines_for(pending.decode("utf-8", errors="replace")):
        print(line, flush=True)


_DIAGNOSES = (
    (
        "No data found",
        "the trainer found no training images. The dataset needs subset folders named <repeats>_<class tokens> "
        "(for example 10_bluebot/) directly inside the dataset folder, holding .png, .jpg, .jpeg, .webp or .bmp "
        "images (lower or upper case). Rename the folders and upload the dataset again.",
    ),
    (
        "out of memory",
        "the GPU ran out of memory. Lower train_batch_size or resolution, set gradient_checkpointing = true in "
        "config.toml, or choose an instance_type with more GPU memory in pipeline.toml.",
    ),
    (
        "No space left on device",
        "the training volume is full. Raise volume_size_gb in pipeline.toml.",
    ),
)


def diagnose(tail: list[str]) -> str:
    text = "\n".join(tail)
    for marker, advice in _DIAGNOSES:
        if marker.lower() in text.lower():
            return advice
    errors = [line.strip() for line in tail if re.match(r"^\s*\w*(Error|Exception)\b", line)]
    last = errors[-1] if errors else (tail[-1].strip() if tail else "no output")
    return (
        f"the last error was: {last[:400]}. The whole log is in CloudWatch Logs under "
        "/aws/sagemaker/TrainingJobs (or the run's output.tar.gz)."
    )


def write_failure(opt_ml: OptMl, reason: str) -> None:
    opt_ml.failure_file.parent.mkdir(parents=True, exist_ok=True)
    opt_ml.failure_file.write_text(reason[:FAILURE_LIMIT], encoding="utf-8")
    log(f"FAILED: {reason}")


def _epoch_of(path: Path, output_name: str) -> int | None:
    match = re.fullmatch(rf"{re.escape(output_name)}-(\d{{6}})\.safetensors", path.name)
    return int(match[1]) if match else None


def publish_extras(opt_ml: OptMl, output_name: str, keep_epoch_loras: int) -> list[str]:
    """Copy what comes with the final LoRA into `model/`: the newest `keep_epoch_loras` per-epoch LoRAs
    (sd-scripts' `<output_name>-<epoch:06d>.safetensors`, train_util.get_epoch_ckpt_name) to `model/epochs/`,
    and the sample images (`<output_dir>/sample/`) to `model/samples/`. Returns what was copied, for the log."""
    checkpoints = opt_ml.checkpoints_dir
    epochs = sorted(
        (epoch, path) for path in checkpoints.glob("*.safetensors") if (epoch := _epoch_of(path, output_name))
    )
    wanted = [path for _, path in epochs[-keep_epoch_loras:]] if keep_epoch_loras else []
    epochs_dir = opt_ml.model_dir / "epochs"
    shutil.rmtree(epochs_dir, ignore_errors=True)  # from an earlier attempt of this job
    if wanted:
        epochs_dir.mkdir(parents=True)
    copied = []
    for path in wanted:
        shutil.copyfile(path, epochs_dir / path.name)
        copied.append(f"epochs/{path.name}")
    sample_dir = checkpoints / "sample"
    images = sorted(p for p in sample_dir.iterdir() if p.is_file()) if sample_dir.is_dir() else []
    if images:
        opt_ml.samples_dir.mkdir(parents=True, exist_ok=True)
        for image in images:
            shutil.copyfile(image, opt_ml.samples_dir / image.name)
        copied.append(f"{len(images)} sample image(s)")
    return copied


def copy_loss_log(opt_ml: OptMl) -> None:
    """The per-step loss, kept in checkpoints/ across spot restarts, goes to output.tar.gz for the run report."""
    loss_log = opt_ml.checkpoints_dir / LOSS_LOG_NAME
    if loss_log.is_file():
        shutil.copyfile(loss_log, opt_ml.output_data_dir / LOSS_LOG_NAME)


def publish_model(opt_ml: OptMl, output_name: str, tail: list[str], architecture: Architecture) -> str | None:
    """Copy the checked LoRA to `model/` (checked as the unpack step will check it: structure, identity,
    every tensor's numbers); the failure reason when there is none to copy."""
    produced = opt_ml.checkpoints_dir / f"{output_name}.safetensors"
    if not produced.is_file():
        return f"Training ended without writing {produced.name}: {diagnose(tail)}"
    try:
        _, summary = inspect_lora_file(produced, architecture)
    except LoraFormatError as error:
        return (
            f"Training wrote {produced.name}, but it is not an SDXL LoRA the output check accepts: {error}."
        )
    opt_ml.model_dir.mkdir(parents=True, exist_ok=True)
    partial = opt_ml.model_dir / f".{produced.name}.partial"
    shutil.copyfile(produced, partial)
    partial.replace(opt_ml.model_dir / produced.name)
    log(
        f"LoRA ok: {produced.name}, {summary.unet_modules} U-Net + {summary.te1_modules} + "
        f"{summary.te2_modules} text encoder modules, rank {summary.network_dim}, alpha {summary.network_alpha}"
    )
    for warning in summary.warnings:
        log(f"note: {warning}")
    return None


def main(environ: Mapping[str, str] = os.environ) -> int:
    opt_ml = OptMl.from_environ(environ)
    try:
        return _train(opt_ml, environ)
    except Exception as error:  # the failure file must say something, whatever broke
        write_failure(opt_ml, f"The training entrypoint failed unexpectedly: {type(error).__name__}: {error}")
        raise


def _train(opt_ml: OptMl, environ: Mapping[str, str]) -> int:
    try:
        inputs = read_job_inputs(opt_ml)
    except ContractError as error:
        write_failure(opt_ml, str(error))
        return EXIT_BAD_INPUT
    hyperparameters = inputs.hyperparameters
    for directory in (opt_ml.checkpoints_dir, opt_ml.model_dir, opt_ml.output_data_dir):
        directory.mkdir(parents=True, exist_ok=True)
    # A spot restart can come after the final save: the restored checkpoints then hold the finished LoRA.
    finished = opt_ml.checkpoints_dir / f"{hyperparameters.output_name}.safetensors"
    if (
        finished.is_file()
        and publish_model(
            opt_ml, hyperparameters.output_name, [], Architecture.for_trainer(hyperparameters.trainer)
        )
        is None
    ):
        log(
            f"an earlier attempt of this job already wrote {finished.name}: published it without training again"
        )
        publish_extras(opt_ml, hyperparameters.output_name, hyperparameters.keep_epoch_loras)
        copy_loss_log(opt_ml)
        return EXIT_OK
    launch = plan_launch(opt_ml, inputs, environ)
    log(
        f"run {hyperparameters.run_id} of dataset {hyperparameters.dataset}: trainer {hyperparameters.trainer}"
    )
    log("command: " + " ".join(launch.command))
    resumed = launch.resumed_from
    output = TrainerOutput(
        resumed_step=resumed.completed_steps if resumed else 0,
        total_steps=resumed.total_steps if resumed else None,
        loss_log=opt_ml.checkpoints_dir / LOSS_LOG_NAME,
    )
    exit_code = _Supervisor(opt_ml.checkpoints_dir, hyperparameters.output_name).run(launch, output)
    copy_loss_log(opt_ml)
    if exit_code is None:
        saved = find_resume_state(opt_ml.checkpoints_dir, hyperparameters.output_name)
        where = f"from {saved.state.directory.name}" if saved else "from the start (no state was saved)"
        log(f"stopped by SIGTERM; a restarted job resumes {where}")
        _log_salvage(opt_ml, hyperparameters.output_name)
        return EXIT_STOPPED
    tail = list(output.tail)
    if exit_code != 0:
        write_failure(
            opt_ml, f"The {hyperparameters.trainer} trainer exited with code {exit_code}: {diagnose(tail)}"
        )
        _log_salvage(opt_ml, hyperparameters.output_name)
        return EXIT_FAILED
    reason = publish_model(
        opt_ml, hyperparameters.output_name, tail, Architecture.for_trainer(hyperparameters.trainer)
    )
    if reason is not None:
        write_failure(opt_ml, reason)
        _log_salvage(opt_ml, hyperparameters.output_name)
        return EXIT_FAILED
    published = publish_extras(opt_ml, hyperparameters.output_name, hyperparameters.keep_epoch_loras)
    if published:
        log(f"published with the LoRA: {', '.join(published)}")
    return EXIT_OK


def _log_salvage(opt_ml: OptMl, output_name: str) -> None:
    """Say which finished epoch survives in checkpoints/, where the pipeline salvages it from."""
    newest = newest_epoch_lora(opt_ml.checkpoints_dir, output_name)
    if newest is None:
        log("no epoch finished, so there is no epoch LoRA to salvage")
        return
    path, epoch = newest
    log(f"the LoRA of epoch {epoch} ({path.name}) stays in checkpoints/ for salvage and resume")
