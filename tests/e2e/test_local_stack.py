"""`lora-pipeline local` in one process and `--local` commands in others, as a user runs them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("lora-pipeline"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture()
def local_stack(tmp_path: Path) -> Iterator[dict[str, str]]:
    port = free_port()
    env = {**os.environ, "LORA_PIPELINE_LOCAL_ENDPOINT": f"http://127.0.0.1:{port}"}
    log = (tmp_path / "local.log").open("w")
    server = subprocess.Popen(
        [CLI, "local", "--port", str(port), "--quiet-period", "1"],
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


def test_local_commands_train_and_download(local_stack: dict[str, str], tmp_path: Path) -> None:
    dataset = tmp_path / "bluebot"
    subprocess.run([CLI, "example", "bluebot", str(dataset)], check=True, capture_output=True)

    upload = cli(local_stack, "upload", str(dataset), "--start")
    assert upload.returncode == 0, upload.stderr
    deadline = time.monotonic() + 300
    while "SUCCEEDED" not in (status := cli(local_stack, "status", "bluebot")).stdout:
        assert "FAILED" not in status.stdout and "REJECTED" not in status.stdout, status.stdout
        assert time.monotonic() < deadline, status.stdout
        time.sleep(2)
    assert "step 10/10 (100%)" in status.stdout

    logs = cli(local_stack, "logs", "bluebot")
    assert logs.returncode == 0 and "lora-metrics step=10/10" in logs.stdout

    out = tmp_path / "out"
    download = cli(local_stack, "download", "bluebot", "-o", str(out))
    assert download.returncode == 0, download.stderr
    assert (out / "bluebot.safetensors").stat().st_size > 0
    assert (out / "manifest.json").is_file()
