"""Two Ray nodes on 127.0.0.1 and `ray job submit` of jobs/generate.py: the job finishes and its run verifies.

Runs after test_generate.py (whose in-process Ray is shut down by then): the cluster
here is started and stopped by deploy/local_cluster.sh, by its own process groups.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_generate import write_spec

from manifests import Run, verify_run

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "local_cluster.sh"


def _free_port(pair: bool = False) -> int:
    """A free loopback port (and the one after it, for Ray Client, if `pair`)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not pair:
            return port
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


# Two Ray nodes on this machine: about 45 s with their start and stop.
pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture
def cluster(tmp_path):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "FACTORY_CACHE": str(tmp_path / "cache"),
    }
    # Ray's socket paths must stay under 107 bytes: a short folder of our own, removed after.
    ray_dir = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    port, dashboard = _free_port(pair=True), _free_port()
    options = ["--port", str(port), "--dashboard-port", str(dashboard), "--dir", str(ray_dir)]
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", *options, "--head-cpus", "1", "--worker-cpus", "2"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(ray_dir / "auth_token"))
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", *options], env=env, capture_output=True, timeout=120)
        shutil.rmtree(ray_dir, ignore_errors=True)


def test_ray_job_submit_on_two_nodes(cluster, tmp_path):
    address, env = cluster
    out = tmp_path / "run"
    spec = write_spec(
        tmp_path / "spec.yaml", str(out), run_id="cluster", rgb={"cameras": ["cam1"], "actors": 1},
        ir={"cameras": ["cam3", "cam6"], "actors": 2},
    )
    runtime_env = {"excludes": [".venv", ".git", "runs"], "env_vars": {"FACTORY_CACHE": env["FACTORY_CACHE"]}}
    submitted = subprocess.run(
        ["ray", "job", "submit", "--address", address, "--working-dir", str(ROOT),
         "--runtime-env-json", json.dumps(runtime_env), "--submission-id", "cluster-test",
         "--", "python", "jobs/generate.py", str(spec)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "succeeded" in (submitted.stdout + submitted.stderr).lower()
    assert verify_run(str(out)).ok()
    assert len(Run(str(out)).table()) == 2 * 6 * 2  # 6 identities x 2 samples, RGB + IR
