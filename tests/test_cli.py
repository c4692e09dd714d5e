"""The command line as a user meets it: help, and bad input as one clear line."""

from __future__ import annotations

import pytest
from helpers import run_cli, set_schema_version
from world_run import write_demo_run

from manifests import RunLayout


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


@pytest.mark.parametrize("command", ["verify", "stats"])
def test_a_run_that_does_not_exist(run_uri, command):
    line = _one_error_line(run_cli(command, run_uri))
    assert line.startswith(f"error: no run at {run_uri} ({run_uri}/run.json: no such ")


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
