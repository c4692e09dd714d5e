"""Bad input to `factory generate`: one clear line, exit 2, and not a single image made."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from test_generate import write_spec

from factory.models.bank import IdentityBank
from manifests import RunInfo, write_run_info


def _fails_before_any_image(result, out: Path | str, expected: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not Path(str(out), "shards").exists()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "cache"))


def test_missing_model_path(tmp_path, cache):
    out = tmp_path / "run"
    spec = write_spec(tmp_path / "s.yaml", str(out), model={"path": str(tmp_path / "no-model")})
    _fails_before_any_image(run_cli("generate", str(spec), "--local"), out, f"model path {tmp_path}/no-model does not exist")


def test_unknown_scheduler(tmp_path, cache):
    out = tmp_path / "run"
    spec = write_spec(tmp_path / "s.yaml", str(out), sampler={"scheduler": "plms"})
    # one line naming the file, the line and the key
    result = run_cli("generate", str(spec), "--local")
    line = next(n for n, text in enumerate(spec.read_text().splitlines(), 1) if "scheduler: plms" in text)
    _fails_before_any_image(result, out, f"s.yaml:{line}: sampler.scheduler: Input should be")


@pytest.mark.slow
def test_identity_missing_from_the_bank(tmp_path, cache):
    bank = tmp_path / "bank.safetensors"
    IdentityBank.from_vectors([1, 2], np.ones((2, 32), np.float32)).save(bank)
    out = tmp_path / "run"
    spec = write_spec(
        tmp_path / "s.yaml",
        str(out),
        model={"preset": "tiny", "bank": str(bank)},
        identities={"source": "bank", "ids": [1, 5]},
    )
    _fails_before_any_image(run_cli("generate", str(spec), "--local"), out, "identity 5 is not in bank")


@pytest.mark.parametrize("where", ["file", "bucket"])
def test_output_that_cannot_be_written(tmp_path, cache, s3_env, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = str(blocker / "run") if where == "file" else "s3://no-such-bucket/run"
    spec = write_spec(tmp_path / "s.yaml", out)
    expected = "run.json: Not a directory" if where == "file" else "bucket 'no-such-bucket' does not exist"
    _fails_before_any_image(run_cli("generate", str(spec), "--local"), out, expected)


@pytest.mark.slow
def test_resume_with_another_spec(tmp_path, cache):
    out = tmp_path / "run"
    write_run_info(str(out), RunInfo.for_spec("test", {"a different": "spec"}, total_shards=3))
    spec = write_spec(tmp_path / "s.yaml", str(out))
    _fails_before_any_image(run_cli("generate", str(spec), "--local", "--resume"), out, "was started from another spec")
    _fails_before_any_image(run_cli("generate", str(spec), "--local"), out, "add --resume, or choose a new output")


def test_descriptions_need_dataset_identities_and_no_bank(tmp_path, cache):
    out = tmp_path / "run"
    spec = write_spec(tmp_path / "s.yaml", str(out), identities={"source": "sampled", "count": 2, "descriptions": "world"})
    _fails_before_any_image(run_cli("generate", str(spec), "--local"), out, "descriptions are read per dataset pid")
    bank = tmp_path / "bank.safetensors"
    IdentityBank.from_vectors([1, 2], np.ones((2, 32), np.float32)).save(bank)
    spec = write_spec(tmp_path / "s.yaml", str(out), model={"preset": "tiny", "bank": str(bank)},
                      identities={"source": "dataset", "dataset": "world://market?identities=4&seed=0",
                                  "descriptions": "world"})
    _fails_before_any_image(run_cli("generate", str(spec), "--local"), out, "give one of them")


@pytest.mark.slow
def test_descriptions_missing_a_pid(tmp_path, cache):
    words = tmp_path / "words.json"
    words.write_text('{"1": "red shirt"}')
    out = tmp_path / "run"
    spec = write_spec(tmp_path / "s.yaml", str(out), identities={
        "source": "dataset", "dataset": "world://market?identities=4&seed=0", "descriptions": str(words)})
    _fails_before_any_image(run_cli("generate", str(spec), "--local"), out, "has no text for pid 2")


@pytest.mark.slow
def test_a_description_too_long_for_the_prompt(tmp_path, cache):
    words = tmp_path / "words.json"
    words.write_text('{"1": "' + "red " * 90 + '", "2": "blue"}')
    out = tmp_path / "run"
    spec = write_spec(tmp_path / "s.yaml", str(out), identities={
        "source": "dataset", "dataset": "world://market?identities=4&seed=0", "descriptions": str(words)})
    result = run_cli("generate", str(spec), "--local")
    assert result.returncode == 2 and "is too long: it is longer than the 77-token limit" in result.stderr


def test_an_unreachable_cluster_is_one_line_and_writes_nothing(tmp_path, cache, closed_port):
    out = tmp_path / "run"
    spec = write_spec(tmp_path / "s.yaml", str(out))
    result = run_cli("generate", str(spec), "--address", f"127.0.0.1:{closed_port}", "--connect-timeout", "5")
    expected = f"cannot reach the Ray cluster at 127.0.0.1:{closed_port} (connection refused)"
    _fails_before_any_image(result, out, expected)
    assert not out.exists()  # nothing written before the cluster answers


def test_resume_where_there_is_no_run_is_refused(tmp_path, cache):
    out = tmp_path / "run"
    spec = write_spec(tmp_path / "s.yaml", str(out))
    result = run_cli("generate", str(spec), "--local", "--resume")
    expected = f"{out}: no run to resume there (no run.json); leave out --resume to start one"
    _fails_before_any_image(result, out, expected)
    assert not out.exists()


def test_an_unrelated_folder_is_never_written_into(tmp_path, cache):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"not ours")
    spec = write_spec(tmp_path / "s.yaml", str(out))
    result = run_cli("generate", str(spec), "--local")
    _fails_before_any_image(result, out, f"{out} is not empty and holds no run (1 other files: holiday.jpg)")
    assert [p.name for p in out.iterdir()] == ["holiday.jpg"]
