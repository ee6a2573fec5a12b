"""One SageMaker-shaped training job on this machine: the dataset the validator checked, the /opt/ml tree the
pipeline's job spec describes, and `container/train` run on it. Used by `make kohya-check` and by
`benchmarks/gpu_train_step.py`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from lora_pipeline.dataset_source import LocalFolder
from lora_pipeline.plan import Plan
from lora_pipeline.training_job_spec import CONFIG_CHANNEL, TRAIN_CHANNEL
from lora_pipeline.use_cases.validate import validate_step_output
from lora_pipeline.validate import build_validation_report
from lora_pipeline_cli.examples import SUBSET, TRIGGER, write_example_dataset
from lora_trainer.sagemaker_env import OptMl

REPO = Path(__file__).resolve().parent.parent
DATASET = TRIGGER
RUN_ID = "kohya-check"
NO_IMAGE = "none: kohya-check runs the entrypoint in .venv-kohya"


class CheckFailed(Exception):
    pass


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def log(message: str) -> None:
    print(f"[kohya-check] {message}", flush=True)


def write_dataset(root: Path, *, config: str, settings: str, images: int, size: int) -> Path:
    """The bluebot example with `images` images of `size` px, 1 repeat, and the given config.toml and
    pipeline.toml."""
    shutil.rmtree(root, ignore_errors=True)
    write_example_dataset(root, images=images, size=size)
    (root / SUBSET).rename(root / f"1_{TRIGGER}")
    (root / "config.toml").write_text(config)
    (root / "pipeline.toml").write_text(settings)
    return root


def lay_out_opt_ml(dataset: Path, opt_ml: Path, base_model: Path) -> Plan:
    """Validate `dataset` and write the /opt/ml tree of the job the pipeline would start for it.

    The hyperparameters are `training_job_spec`'s, except `base_model`: the local random-weight model instead of
    the hub id. Raises CheckFailed when the validator rejects the dataset.
    """
    report = build_validation_report(LocalFolder(dataset), DATASET)
    problems = "; ".join(f"{p.code}: {p.message}" for p in report.problems)
    require(report.trainable, f"the validator rejected the dataset: {problems}")
    require(report.plan is not None and report.kohya_toml is not None, "the validator made no plan")
    assert report.plan is not None and report.kohya_toml is not None
    job = validate_step_output(report, "kohya-check-bucket", RUN_ID, training_image=NO_IMAGE).job
    shutil.rmtree(opt_ml, ignore_errors=True)
    layout = OptMl(opt_ml)
    layout.write_job_config(
        {**job.hyperparameters, "base_model": str(base_model)},
        [channel["ChannelName"] for channel in job.input_data_config],
    )
    shutil.copytree(dataset, layout.channel(TRAIN_CHANNEL), dirs_exist_ok=True)
    run_config = layout.channel(CONFIG_CHANNEL)
    run_config.mkdir(parents=True, exist_ok=True)
    (run_config / "kohya.toml").write_text(report.kohya_toml)
    if report.prompts_txt:
        (run_config / "prompts.txt").write_text(report.prompts_txt)
    log(f"validated {DATASET}: {report.plan.total_steps} steps planned; kohya.toml:\n{report.kohya_toml}")
    return report.plan


def job_environment(opt_ml: Path, sd_scripts: Path, work: Path) -> dict[str, str]:
    """What SageMaker and the image set for the entrypoint, pointed at this machine's folders."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(REPO / part) for part in (".", "container", "layers/common")),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(work / "huggingface"),
        "SD_SCRIPTS_DIR": str(sd_scripts),
        "TOKENIZER_CACHE_DIR": str(work / "tokenizers"),
        "OPT_ML": str(opt_ml),
    }


def run_module(python: Path, arguments: list[str], environment: dict[str, str]) -> str:
    """Run `python arguments...` and return its last output line (CalledProcessError on failure)."""
    completed = subprocess.run(
        [str(python), *arguments], env=environment, check=True, stdout=subprocess.PIPE, text=True
    )
    return completed.stdout.strip().splitlines()[-1]


def prepare_engine_inputs(python: Path, environment: dict[str, str], model_cache: Path | None) -> Path:
    """Build (or reuse) the random-weight SDXL model and bake the tokenizers; returns the model folder."""
    cache = [str(model_cache)] if model_cache else []
    model = Path(run_module(python, ["-m", "kohya_check.sdxl_random", *cache], environment))
    run_module(
        python, ["-m", "lora_trainer.tokenizer_cache", environment["TOKENIZER_CACHE_DIR"]], environment
    )
    return model


@dataclass
class JobRun:
    """One run of `container/train`: exit code, console lines and the peak memory of its processes (the sum of
    their proportional set sizes, so pages shared between forks count once)."""

    exit_code: int
    lines: list[str] = field(default_factory=list)
    peak_memory_bytes: int = 0


def run_entrypoint(
    python: Path, environment: dict[str, str], stop_when: Callable[[], bool] | None = None
) -> JobRun:
    """Run `container/train` with `python`; once `stop_when()` is true, send it SIGTERM as SageMaker does on a
    spot interruption (polled every second)."""
    process = subprocess.Popen(
        [str(python), str(REPO / "container" / "train")],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run = JobRun(exit_code=-1)
    finished = threading.Event()

    def relay() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            run.lines.append(line.rstrip("\n"))
            print(f"    {line}", end="", flush=True)

    def sample_memory() -> None:
        while not finished.wait(0.5):
            try:
                root = psutil.Process(process.pid)
                # PSS: the DataLoader workers are forks of the trainer, and RSS would count the model once each.
                total = sum(p.memory_full_info().pss for p in [root, *root.children(recursive=True)])
            except psutil.Error:
                continue
            run.peak_memory_bytes = max(run.peak_memory_bytes, total)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    threading.Thread(target=sample_memory, daemon=True).start()
    signalled = False
    while process.poll() is None:
        time.sleep(1)
        if stop_when is not None and not signalled and stop_when():
            process.send_signal(signal.SIGTERM)
            signalled = True
    reader.join(timeout=30)
    finished.set()
    run.exit_code = process.returncode
    return run
