"""Cold start: how long each Lambda handler takes to import from what `sam build` makes, on python3.12.

    python benchmarks/cold_start.py [--runs 5] [--skip-build] [--limit 0.35]

1. `sam build` (the SAM CLI from .venv-sam, no Docker) into .aws-sam/cold-start, with python3.12 on PATH. The
   layer is built for this machine's platform (LAYER_PLATFORM, see layers/common/Makefile) so that it imports
   here; Lambda gets the same packages for arm64.
2. boto3 as the python3.12 runtime provides it (the version requirements-dev.txt pins) into
   .aws-sam/cold-start-runtime: the layer ships none.
3. Each handler is imported `--runs` times, each in a fresh `python3.12 -I` process whose sys.path is what Lambda
   gives it (the function's code, the layer's python/, the runtime's packages); prints the median and the worst
   run in seconds, wall clock and CPU, and the same for `import boto3` alone (paid at the first AWS call, not
   at import), with the machine's load average: on a shared machine the wall clock also measures the
   neighbours, so the limit applies to the CPU seconds (on an idle machine the two agree).
Exit status 1 when a handler's median import exceeds `--limit` CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_DIR = ROOT / ".aws-sam" / "cold-start"
RUNTIME_DIR = ROOT / ".aws-sam" / "cold-start-runtime"
SAM = ROOT / ".venv-sam" / "bin" / "sam"
FUNCTIONS = (
    "IngestFunction",
    "ValidateFunction",
    "UnpackFunction",
    "NotifyFunction",
    "CancelFunction",
    "SalvageFunction",
)
# Python 3.12 through pyenv (this machine's default python3 is 3.11); harmless where python3.12 is plain.
ENV = {
    **os.environ,
    "PYENV_VERSION": os.environ.get("PYENV_VERSION", "3.11.7:3.12.1"),
    "SAM_CLI_TELEMETRY": "0",
}
TIMER = """
import sys, time
sys.path[:0] = {path!r}
wall, cpu = time.perf_counter(), time.process_time()
import {module}
print(time.perf_counter() - wall, time.process_time() - cpu)
"""


def _run(command: list[str], **kwargs: object) -> str:
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        sys.exit(
            f"{' '.join(command[:3])} ... failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return str(done.stdout)


def build() -> None:
    machine = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}[
        platform.machine().lower()
    ]
    ENV["LAYER_PLATFORM"] = f"manylinux2014_{machine} manylinux_2_28_{machine}"
    shutil.rmtree(BUILD_DIR, ignore_errors=True)
    _run(
        [str(SAM), "build", "--template-file", str(ROOT / "template.yaml"), "--build-dir", str(BUILD_DIR)],
        cwd=ROOT,
    )
    pin = re.search(r"^boto3==(\S+)", (ROOT / "requirements-dev.txt").read_text(), re.MULTILINE)
    if pin is None:
        sys.exit("requirements-dev.txt pins no boto3")
    shutil.rmtree(RUNTIME_DIR, ignore_errors=True)
    _run(["python3.12", "-m", "pip", "install", "--quiet", "--target", str(RUNTIME_DIR), f"boto3=={pin[1]}"])


def import_seconds(module: str, path: list[str], runs: int) -> list[tuple[float, float]]:
    env = {
        **ENV,
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "sdxl-lora-pipeline",
        "POWERTOOLS_METRICS_NAMESPACE": "SdxlLoraPipeline",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }
    times = []
    for _ in range(runs):
        done = subprocess.run(
            ["python3.12", "-I", "-c", TIMER.format(path=path, module=module)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            cwd=path[0],
        )
        if done.returncode != 0:
            sys.exit(f"importing {module} from {path[0]} failed:\n{done.stderr[-3000:]}")
        wall, cpu = done.stdout.strip().splitlines()[-1].split()
        times.append((float(wall), float(cpu)))
    return times


def layer_facts(layer: Path) -> str:
    files = [p for p in layer.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    sources = sum(p.suffix == ".py" for p in files)
    compiled = sum(p.suffix == ".pyc" for p in files)
    shipped = sorted(name for name in ("boto3", "botocore", "aws_xray_sdk") if (layer / name).exists())
    return (
        f"layer: {size / 1e6:.1f} MB, {sources} .py, {compiled} .pyc, "
        f"AWS SDK packages shipped: {', '.join(shipped) or 'none'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-build", action="store_true", help="reuse the last build")
    parser.add_argument(
        "--limit", type=float, default=0.35, help="seconds a handler's median import may take"
    )
    args = parser.parse_args()
    if not args.skip_build:
        build()
    layer = BUILD_DIR / "CommonLayer" / "python"
    print(layer_facts(layer))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.runs} fresh processes each")
    print(f"{'import':<16} {'wall median':>11} {'wall worst':>10} {'CPU median':>10} {'CPU worst':>9}")
    slow = []
    modules = [
        (function, "app", [str(BUILD_DIR / function), str(layer), str(RUNTIME_DIR)]) for function in FUNCTIONS
    ]
    for label, module, path in [*modules, ("boto3 (runtime)", "boto3", [str(RUNTIME_DIR)])]:
        times = import_seconds(module, path, args.runs)
        wall = [t[0] for t in times]
        cpu = [t[1] for t in times]
        print(
            f"{label:<16} {statistics.median(wall):>11.3f} {max(wall):>10.3f} "
            f"{statistics.median(cpu):>10.3f} {max(cpu):>9.3f}"
        )
        if module == "app" and statistics.median(cpu) > args.limit:
            slow.append(label)
    if slow:
        print(f"over {args.limit} s: {', '.join(slow)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
