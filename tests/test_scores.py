"""Identity scores: schema 2.1, `factory score` after the fact, verify, stats and the quality gate."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers import run_cli, set_schema_version
from safetensors.torch import load_file, save_file

from factory.reid.oracle import ORACLE
from manifests import Run, verify_run
from manifests.errors import ManifestError, SchemaVersionError
from manifests.layout import RunLayout
from manifests.schema import SCORE_COLUMNS
from manifests.scores import decode_scores
from manifests.stats import run_stats
from manifests.streaming import ReidStream, Selection
from tests.world_run import write_demo_run


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> tuple[str, dict]:
    """A world run (2 shards x 3 people x 2 pairs), scored by the shipped oracle through the CLI."""
    uri = str(tmp_path_factory.mktemp("scores") / "run")
    write_demo_run(uri, shards=2, identities_per_shard=3, images_per_identity=2)
    before = Run(uri).table()
    result = run_cli("score", uri)
    assert result.returncode == 0, result.stderr
    return uri, {"before": before, "stdout": result.stdout}


def test_a_run_without_scores_reads_them_as_null(tmp_path):
    uri = str(tmp_path / "run")
    write_demo_run(uri, shards=1)
    table = Run(uri).table()
    assert all(table[name].null_count == table.num_rows for name in SCORE_COLUMNS)


def test_score_fills_both_columns_for_every_image_and_leaves_tars_alone(scored):
    uri, seen = scored
    table = Run(uri).table()
    assert "scored 2 shard(s) with world (0 of 2 were scored before)" in seen["stdout"]
    assert all(table[name].null_count == 0 for name in SCORE_COLUMNS)
    assert table.drop_columns(list(SCORE_COLUMNS)).equals(seen["before"].drop_columns(list(SCORE_COLUMNS)))
    score, margin = (np.array(table[name].to_pylist()) for name in SCORE_COLUMNS)
    assert ((-1 <= score) & (score <= 1)).all() and (margin <= score + 1).all()
    # a generated pair is scored as a pair: both images of a key get the same figures
    by_key: dict[str, set] = {}
    for key, s, m in zip(table["key"].to_pylist(), score, margin):
        by_key.setdefault(key, set()).add((round(float(s), 6), round(float(m), 6)))
    assert all(len(figures) == 1 for figures in by_key.values())
    assert verify_run(uri).ok(strict=True)


def test_a_rerun_scores_only_what_is_missing(scored, tmp_path):
    uri, _ = scored
    again = run_cli("score", uri)
    assert "scored 0 shard(s)" in again.stdout and "2 of 2 were scored before" in again.stdout


def test_the_gate_leaves_out_low_scores_and_unscored_images(scored, tmp_path):
    uri, _ = scored
    table = Run(uri).table()
    threshold = float(np.median(table["identity_score"].to_numpy()))
    kept = ReidStream([uri], selection=Selection(min_identity_score=threshold)).rows
    expected = int((table["identity_score"].to_numpy() >= threshold).sum())
    assert kept.num_rows == expected and 0 < expected < table.num_rows
    assert min(kept["identity_score"].to_pylist()) >= threshold
    unscored = str(tmp_path / "unscored")
    write_demo_run(unscored, shards=1)
    with pytest.raises(ManifestError, match="identity_score >= 0.1"):
        ReidStream([unscored], selection=Selection(min_identity_score=0.1))


def test_stats_show_the_score_distribution_and_what_each_threshold_keeps(scored):
    uri, _ = scored
    numbers = run_stats(uri)["identity_score"]
    assert numbers["scored_images"] == 24 and sum(numbers["histogram"].values()) == 24
    assert numbers["kept_at_min_score"]["0.0"] >= numbers["kept_at_min_score"]["0.8"]
    shown = json.loads(run_cli("stats", uri, "--json").stdout)
    assert shown["identity_score"] == numbers


def test_verify_names_a_score_file_that_does_not_fit_its_shard(scored, tmp_path):
    uri, _ = scored
    copy = str(tmp_path / "copy")
    shutil.copytree(uri, copy)
    path = RunLayout(copy).scores_uri(1)
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)  # one member short
    report = verify_run(copy)
    assert not report.ok() and report.failed_shards() == [1]
    assert "000001.parquet" in report.problems[0].message


def test_schema_minor_versions_are_read_and_an_unknown_major_is_refused(tmp_path):
    uri = str(tmp_path / "run")
    write_demo_run(uri, shards=1)
    path = RunLayout(uri).fragment_uri(0)
    for version in (b"2", b"2.0", b"2.9"):  # older and newer minors of a known major
        set_schema_version(path, version)
        assert Run(uri).table().num_rows == 12  # 3 people x 2 pairs
    older = pq.read_table(path).drop_columns(list(SCORE_COLUMNS))  # as a 2.0 writer wrote it
    pq.write_table(older, path)
    set_schema_version(path, b"2")
    table = Run(uri).table()
    assert all(table[name].null_count == 12 for name in SCORE_COLUMNS)
    set_schema_version(path, b"3.0")
    with pytest.raises(SchemaVersionError, match="schema version 3.0, but this manifests package reads versions 1.x, 2.x"):
        Run(uri).table()


def test_a_spec_with_quality_makes_a_run_whose_every_image_is_scored(tmp_path, monkeypatch):
    from test_generate import make_spec

    from factory import api

    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "cache"))
    out = str(tmp_path / "run")
    summary = api.run(make_spec(out, quality={"reid": "world"}), use_ray=False)
    assert summary["scored_shards"] == 3 and summary["scoring_seconds"] > 0
    table = Run(out).table()
    assert table.num_rows == 6 * 2 * 2 and all(table[name].null_count == 0 for name in SCORE_COLUMNS)
    assert verify_run(out).ok(strict=True)


@pytest.mark.slow  # kept out of the quick loop's 3 minutes
def test_a_run_scored_by_one_model_is_rescored_by_another_only_when_asked(scored, tmp_path):
    uri = str(tmp_path / "run")
    shutil.copytree(scored[0], uri)
    other = tmp_path / "other-model"  # the oracle with its weights jittered: another model, same shape
    shutil.copytree(ORACLE, other)
    generator = torch.Generator().manual_seed(0)
    weights = {name: w * (1 + 0.2 * torch.randn(w.shape, generator=generator)) if w.is_floating_point() else w
               for name, w in load_file(other / "model.safetensors").items()}
    save_file(weights, other / "model.safetensors")
    before = Run(uri).table()

    refused = run_cli("score", uri, "--reid", str(other))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "2 shard(s) hold scores of another model (world)" in refused.stderr and "--rescore" in refused.stderr
    assert Run(uri).table().equals(before)  # nothing written

    assert run_cli("score", uri, "--reid", str(other), "--rescore").returncode == 0
    after = Run(uri).table()
    assert after["identity_score"].to_pylist() != before["identity_score"].to_pylist()
    assert after.drop_columns(list(SCORE_COLUMNS)).equals(before.drop_columns(list(SCORE_COLUMNS)))
    layout = RunLayout(uri)
    for shard in (0, 1):
        path = layout.scores_uri(shard)
        with open(path, "rb") as f:
            assert decode_scores(f.read(), path)[1]["reid"] == str(other)
    again = run_cli("score", uri, "--reid", str(other))
    assert "scored 0 shard(s)" in again.stdout and verify_run(uri).ok(strict=True)


def test_dlcr_variants_are_scored_against_their_sources_and_the_gate_trims_them(tmp_path):
    """A run of variants only (the recolour control, no model needed) is scored against each identity's source
    images, read from the dataset its rows name; VariantsSpec.min_identity_score then keeps the ones above."""
    from factory import api
    from factory.datasets import load_dataset
    from factory.dlcr.spec import InpaintSpec
    from factory.reid.data import ReidDataError, relative_name, variant_part
    from factory.reid.images import StoredImages
    from factory.reid.oracle import load_reid
    from factory.reid.train import extract_images

    world = "world://prcc?identities=8&seed=0"
    uri = str(tmp_path / "variants")
    api.run(InpaintSpec.model_validate({
        "run_id": "v", "output": uri, "generator": "recolour", "variants": 2,
        "source": {"dataset": world, "identities": 3, "images_per_identity": 2},
    }), use_ray=False)
    assert run_cli("score", uri).returncode == 0
    table = Run(uri).table()
    assert table["identity_score"].null_count == 0 and table["identity_margin"].null_count == 0

    splits = load_dataset(world)
    model, spec = load_reid("world")
    size = (spec.height, spec.width)
    parents = sorted(set(zip(table["parent"].to_pylist(), table["identity"].to_pylist())))
    sources = extract_images(model, StoredImages.of_files([splits.root / p for p, _ in parents], size), "rgb")
    people = sorted({pid for _, pid in parents})
    prototypes = np.stack([sources[[pid == person for _, pid in parents]].mean(0) for person in people])
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    variants = extract_images(model, np.stack([np.asarray(image) for image in _decoded(Run(uri), table, size)]), "rgb")
    expected = [float(v @ prototypes[people.index(pid)]) for v, pid in zip(variants, table["identity"].to_pylist())]
    np.testing.assert_allclose(table["identity_score"].to_pylist(), expected, atol=1e-4)

    names = [relative_name(r.path, splits.root) for r in splits["train"]]
    scores = sorted(table["identity_score"].to_pylist())
    threshold = scores[len(scores) // 2]
    kept, _ = variant_part(uri, names, min_identity_score=threshold)
    assert len(kept.uris) == sum(s >= threshold for s in scores) and 0 < len(kept.uris) < len(scores)
    assert len(variant_part(uri, names)[0].uris) == len(scores)
    with pytest.raises(ReidDataError, match=r"no variant has identity_score >= 2 .*factory score"):
        variant_part(uri, names, min_identity_score=2.0)  # above any cosine: one line naming the gate


def _decoded(run: Run, table, size: tuple[int, int]) -> list:
    """The run's images in table order, resized to the ReID input (height, width)."""
    import io

    from PIL import Image

    out = []
    for row in table.to_pylist():
        data = run.storage.get_range(row["shard_uri"], row["offset"], row["size"])
        with Image.open(io.BytesIO(data)) as image:
            out.append(image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR))
    return out
