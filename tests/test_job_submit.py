"""`ray job submit --working-dir . -- python -m sepo_ray.run ...` against a head node started here."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RAY_BIN = Path(sys.executable).with_name("ray")
SMALL = ["--iterations", "1", "--no-eval", "--set", "prompts_per_batch=2", "--set", "group_size=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` = this venv's
    return env


def _ray_bin() -> Path:
    return RAY_BIN if RAY_BIN.exists() else Path(shutil.which("ray") or "ray")


@pytest.fixture(scope="module")
def head_address():
    """A one-CPU Ray head node with the job server, for the module's jobs; its address."""
    gcs_port, dash_port = free_port(), free_port()
    ray_tmp = tempfile.mkdtemp(prefix="sepo-ray-", dir="/tmp")  # AF_UNIX socket paths must stay < 108 bytes
    head = subprocess.Popen(
        [
            str(_ray_bin()),
            "start",
            "--head",
            "--block",
            f"--port={gcs_port}",
            "--num-cpus=1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash_port}",
            # the agents' default ports collide with a Ray runtime other tests started on this machine
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={ray_tmp}",
            "--disable-usage-stats",
        ],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash_port}"
    try:
        deadline = time.time() + 120
        while True:  # wait for the job server
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except OSError:
                if time.time() > deadline or head.poll() is not None:
                    pytest.fail("the Ray head node did not come up")
                time.sleep(1)
        yield address
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its own processes on SIGTERM
            head.wait(timeout=60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def submit(address: str, args: list[str]) -> subprocess.CompletedProcess:
    """``ray job submit --working-dir <repo> -- python -m sepo_ray.run ARGS``, retried while no job agent is up."""
    agent_deadline = time.time() + 240
    while True:  # the job agent may come up well after the dashboard answers on a loaded machine
        job = subprocess.run(
            [str(_ray_bin()), "job", "submit", f"--address={address}", "--working-dir", str(ROOT), "--"]
            + ["python", "-m", "sepo_ray.run", *args],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=420,
        )
        if "No available agent" not in job.stdout + job.stderr or time.time() > agent_deadline:
            return job
        time.sleep(5)


@pytest.mark.parametrize(
    "task, extra",
    [
        ("toy", []),
        # the text path end to end (SEDD generator, prompts, GPT-2 reward actor) at its smallest: T = 4, one
        # iteration of 2 prompts x 2 completions, no held-out evaluation
        ("text", ["--set", "denoise_steps=4", "--set", "validation_interval=0"]),
    ],
)
def test_ray_job_submit_runs_sepo(head_address, tmp_path, task, extra):
    job = submit(head_address, [task, *SMALL, *extra, "--output", str(tmp_path / "run")])
    out = job.stdout + job.stderr
    assert job.returncode == 0, out[-3000:]
    assert "joined Ray cluster" in out, out[-3000:]
    assert "iter   1/1" in out, out[-3000:]
    assert (tmp_path / "run" / "result.json").exists()
