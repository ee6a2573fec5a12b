"""Real SDXL LoRA training speed on a CUDA GPU: the pipeline's default config against the AWS blog's.

Both runs go through the product's own path, as `make kohya-check` does on the CPU: the bluebot dataset at
1024x1024 is validated, the effective kohya.toml is laid out in a SageMaker-shaped tree, and `container/train`
launches sd-scripts' `sdxl_train_network.py` through `accelerate` on the full-size SDXL architecture with random
weights (`kohya_check.sdxl_random`). Each run trains one epoch of `--images` steps (batch 1, 1 repeat);
s/step is the trainer's own rate at the last step, peak GPU memory is sampled from nvidia-smi every 0.5 s.

On a bare CUDA machine with Python 3.11 (nothing downloaded there):
    here:        make gpu-bench-bundle            # out/gpu-bench.tar: the repo, sd-scripts and every wheel
    GPU machine: tar xf gpu-bench.tar && cd gpu-bench && python3.11 benchmarks/gpu_train_step.py --wheels wheels
The first run creates `.venv-gpu-bench` from the wheels (image-requirements.txt) and re-runs itself in it.
Prints one line per config and the ratio `blog / default` of s/step.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_VENV = REPO / ".venv-gpu-bench"
IMAGE_REQUIREMENTS = REPO / "container" / "image-requirements.txt"
CONFIGS = {
    # The pipeline's defaults: an empty config.toml, one epoch.
    "default": "max_train_epochs = 1\n",
    # The AWS blog sample's config as our validator normalises it, shortened to one epoch.
    "aws-blog": (REPO / "examples" / "configs" / "aws-blog-style.toml")
    .read_text()
    .replace("max_train_epochs = 8", "max_train_epochs = 1"),
}
SETTINGS = 'trainer = "kohya"\noutput_name = "bluebot"\n'


def bootstrap(wheels: Path) -> None:
    """Create the benchmark venv from carried wheels (no index) and re-run this script in it."""
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        venv.create(BENCH_VENV, with_pip=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels)]
        subprocess.run([*pip, "-r", str(IMAGE_REQUIREMENTS)], check=True)
        subprocess.run(
            [*pip, "--no-deps", "--no-build-isolation", "-e", str(REPO / "build" / "sd-scripts")], check=True
        )
    os.execv(str(python), [str(python), __file__, *sys.argv[1:], "--in-venv"])


class GpuMemoryPeak:
    """Peak used memory of GPU 0 in MiB, from nvidia-smi every 0.5 s."""

    def __init__(self) -> None:
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "--id=0"]
        while not self._stop.wait(0.5):
            used = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
            if used.isdigit():
                self.peak_mib = max(self.peak_mib, int(used))

    def __enter__(self) -> GpuMemoryPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(name: str, config: str, images: int, work: Path, base_model: Path) -> dict[str, float]:
    from kohya_check.job import job_environment, lay_out_opt_ml, require, run_entrypoint, write_dataset
    from lora_pipeline.training_metrics import parse_metric_line

    folder = work / name
    dataset = write_dataset(folder / "dataset", config=config, settings=SETTINGS, images=images, size=1024)
    plan = lay_out_opt_ml(dataset, folder / "opt-ml", base_model)
    environment = job_environment(folder / "opt-ml", REPO / "build" / "sd-scripts", work)
    with GpuMemoryPeak() as memory:
        run = run_entrypoint(Path(sys.executable), environment)
    require(run.exit_code == 0, f"{name}: the training job exited {run.exit_code}")
    progress = [p for p in map(parse_metric_line, run.lines) if p is not None and p.sec_per_step]
    require(bool(progress), f"{name}: the trainer reported no step rate")
    sec_per_step = progress[-1].sec_per_step or 0.0
    images_per_step = plan.batch_size * plan.gradient_accumulation_steps
    return {
        "sec_per_step": sec_per_step,
        "images_per_sec": images_per_step / sec_per_step,
        "peak_gpu_mib": memory.peak_mib,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--wheels", type=Path, help="folder of carried wheels to build the venv from")
    parser.add_argument("--images", type=int, default=20, help="images (= steps) per run")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "gpu-bench")
    parser.add_argument("--in-venv", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.in_venv and args.wheels is not None:
        bootstrap(args.wheels)
    sys.path[:0] = [str(REPO), str(REPO / "container"), str(REPO / "layers" / "common"), str(REPO / "cli")]
    from kohya_check.job import job_environment, prepare_engine_inputs

    work = args.work.absolute()
    base_model = prepare_engine_inputs(
        Path(sys.executable), job_environment(work, REPO / "build" / "sd-scripts", work), None
    )
    results = {name: measure(name, config, args.images, work, base_model) for name, config in CONFIGS.items()}
    for name, figures in results.items():
        print(
            f"{name}: {figures['sec_per_step']:.3f} s/step, {figures['images_per_sec']:.2f} images/s, "
            f"peak GPU memory {figures['peak_gpu_mib'] / 1024:.1f} GiB"
        )
    ratio = results["aws-blog"]["sec_per_step"] / results["default"]["sec_per_step"]
    print(f"aws-blog / default: {ratio:.2f}x the time per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
