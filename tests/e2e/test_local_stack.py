"""`lora-pipeline local` in one process and `--local` commands in others, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.container_jobs import make_sd_scripts_stand_in

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("lora-pipeline"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def local_stack(tmp_path: Path, *options: str) -> Iterator[dict[str, str]]:
    """`lora-pipeline local` running; yields the environment that points `--local` commands at it."""
    port = free_port()
    env = {**os.environ, "LORA_PIPELINE_LOCAL_ENDPOINT": f"http://127.0.0.1:{port}"}
    log = (tmp_path / "local.log").open("w")
    server = subprocess.Popen(
        [CLI, "local", "--port", str(port), "--quiet-period", "1", *options],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([CLI, "status", "--local"], env=env, capture_output=True).returncode != 0:
            assert server.poll() is None, (tmp_path / "local.log").read_text()
            assert time.monotonic() < deadline, "the local stack did not come up"
            time.sleep(1)
        yield env
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args, "--local"], env=env, capture_output=True, text=True)


def example_dataset(tmp_path: Path) -> Path:
    dataset = tmp_path / "bluebot"
    subprocess.run([CLI, "example", "bluebot", str(dataset)], check=True, capture_output=True)
    return dataset


def upload_and_wait(env: dict[str, str], dataset: Path) -> str:
    """Upload with `--start` and wait for the run to succeed; returns the last `status` output."""
    upload = cli(env, "upload", str(dataset), "--start")
    assert upload.returncode == 0, upload.stderr
    deadline = time.monotonic() + 300
    while "SUCCEEDED" not in (status := cli(env, "status", dataset.name)).stdout:
        assert "FAILED" not in status.stdout and "REJECTED" not in status.stdout, status.stdout
        assert time.monotonic() < deadline, status.stdout
        time.sleep(2)
    return status.stdout


def test_local_commands_train_and_download(tmp_path: Path) -> None:
    with local_stack(tmp_path) as env:
        status = upload_and_wait(env, example_dataset(tmp_path))
        assert "step 10/10 (100%)" in status
        logs = cli(env, "logs", "bluebot")
        assert logs.returncode == 0 and "lora-metrics step=10/10" in logs.stdout
        out = tmp_path / "out"
        download = cli(env, "download", "bluebot", "-o", str(out))
    assert download.returncode == 0, download.stderr
    assert (out / "bluebot.safetensors").stat().st_size > 0
    assert (out / "manifest.json").is_file()


def test_local_runs_kohya_from_a_checkout_with_a_local_base_model(tmp_path: Path) -> None:
    sd_scripts = make_sd_scripts_stand_in(tmp_path / "sd-scripts")
    base_model = tmp_path / "sd_xl_base_1.0.safetensors"
    base_model.write_bytes(b"base model weights")
    dataset = example_dataset(tmp_path)
    (dataset / "pipeline.toml").write_text('output_name = "bluebot"\n')  # the Kohya trainer, on a GPU type
    with local_stack(tmp_path, "--sd-scripts", str(sd_scripts), "--base-model", str(base_model)) as env:
        upload_and_wait(env, dataset)
    call = json.loads((sd_scripts / "call.json").read_text())
    assert Path(call["options"]["pretrained_model_name_or_path"]).name == base_model.name
    assert call["environment"]["HF_HUB_OFFLINE"] == "1"


def test_local_prints_each_email_and_answers_requests_quietly(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    subprocess.run([CLI, "example", "broken", str(broken)], check=True, capture_output=True)
    log = tmp_path / "local.log"
    with local_stack(tmp_path) as env:
        assert cli(env, "upload", str(broken), "--force", "--start").returncode == 0
        deadline = time.monotonic() + 120
        while "Dataset rejected: broken (" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(1)
        logs = cli(env, "logs", "broken")
        assert logs.returncode == 0 and "was rejected before training" in logs.stdout
    printed = log.read_text()
    assert "No training job was started, so nothing was spent on GPUs." in printed
    assert "lora-pipeline upload <folder> --dataset broken --start" in printed
    assert " HTTP/1.1" not in printed


def test_local_prints_the_request_log_when_asked(tmp_path: Path) -> None:
    with local_stack(tmp_path, "--access-log") as env:
        assert cli(env, "status").returncode == 0
    assert '"POST / HTTP/1.1" 200' in (tmp_path / "local.log").read_text()
