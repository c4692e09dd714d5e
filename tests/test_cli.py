"""The command line as a user meets it: help, and bad input as one clear line."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from helpers import run_cli, set_schema_version
from world_run import write_demo_run

from manifests import RunLayout

ROOT = Path(__file__).resolve().parent.parent


def _one_error_line(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_help_teaches_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "verify" in result.stdout and "stats" in result.stdout
    result = run_cli("verify", "--help")
    assert result.returncode == 0 and "s3://bucket/prefix/RUN_ID" in result.stdout


@pytest.mark.parametrize("command", ["verify", "stats", "preview", "identity"])
def test_a_run_that_does_not_exist(run_uri, command, tmp_path):
    more = ["--out", str(tmp_path / "sheet.png")] if command == "preview" else []
    line = _one_error_line(run_cli(command, run_uri, *more))
    assert line.startswith(f"error: no run at {run_uri} ({run_uri}/run.json: no such ")


def test_ls_and_eval_reid_where_there_is_nothing(tmp_path):
    assert _one_error_line(run_cli("ls", str(tmp_path / "absent"))) == f"error: {tmp_path / 'absent'}: no such folder"
    spec = tmp_path / "reid.yaml"
    demo = (ROOT / "jobs" / "specs" / "reid-demo.yaml").read_text()
    spec.write_text(demo.replace("output: runs/reid-demo", f"output: {tmp_path}"))
    line = _one_error_line(run_cli("eval-reid", str(spec)))
    assert line == f"error: {tmp_path}: no trained model here (model.json missing); run `factory train-reid` first"


def test_ls_tells_complete_incomplete_and_running_runs_apart(tmp_path):
    for name in ("done", "stopped", "busy"):
        write_demo_run(str(tmp_path / name), shards=2)
    for name in ("stopped", "busy"):
        (tmp_path / name / "_SUCCESS.json").unlink()
        (tmp_path / name / "manifest" / "000001.parquet").unlink()
    an_hour_ago = time.time() - 3600
    for path in (tmp_path / "stopped").rglob("*"):
        os.utime(path, (an_hour_ago, an_hour_ago))
    result = run_cli("ls", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    found = {Path(e["uri"]).name: (e["state"], e["shards_committed"], e["shards_planned"]) for e in entries}
    assert found == {"busy": ("running", 1, 2), "done": ("complete", 2, 2), "stopped": ("incomplete", 1, 2)}


def test_a_bucket_that_does_not_exist(s3_env):
    line = _one_error_line(run_cli("stats", "s3://no-such-bucket/run"))
    assert "bucket 'no-such-bucket' does not exist" in line


def test_a_fragment_with_an_unknown_schema_version(tmp_path):
    run_uri = str(tmp_path / "run")
    write_demo_run(run_uri, shards=2)
    path = RunLayout(run_uri).fragment_uri(1)
    set_schema_version(path, b"7")

    line = _one_error_line(run_cli("stats", run_uri))
    assert "000001.parquet: manifest schema version 7" in line

    result = run_cli("verify", run_uri)  # verify goes on to the other shards and fails at the end
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "shard 000001: " in result.stderr and "schema version 7" in result.stderr


def test_an_s3_endpoint_that_refuses_connections(s3_env, closed_port):
    endpoint = f"http://127.0.0.1:{closed_port}"
    result = run_cli("verify", "s3://bucket/run", env={"AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "2"})
    line = _one_error_line(result)
    assert line.startswith(f"error: s3://bucket/run/run.json: cannot reach S3 at {endpoint}")
    assert result.returncode == 2
