"""Every layout the world writes loads back through the real-layout loaders, exactly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from factory.datasets import DatasetError, load_dataset
from factory.errors import FactoryError
from factory.evaluation import protocols as p
from factory.evaluation.protocols import FeatureSet
from factory.world.cache import parse_world_uri
from factory.world.layouts import write_world


def _annotations(root: Path) -> dict[str, dict]:
    lines = (root / "world" / "annotations.jsonl").read_text().splitlines()
    return {row["path"]: row for row in map(json.loads, lines)}


def _world(tmp_path: Path, layout: str, identities: int, **options) -> tuple[Path, dict[str, dict]]:
    # A root containing "cam" must not confuse any loader's parsing.
    root = tmp_path / "cam9_camera_root" / layout
    write_world(layout, root, identities=identities, seed=7, **options)
    return root, _annotations(root)


def _check_against_truth(splits, truth: dict[str, dict], root: Path, relabelled: set[str] = frozenset()):
    """Every record is a rendered image, with the modality it was rendered in and its true identity."""
    labels: dict[tuple[str, int], int] = {}
    for split, records in splits.splits.items():
        for r in records:
            row = truth[r.path.relative_to(root).as_posix()]
            assert r.modality == row["modality"]
            if split in relabelled:  # index files carry labels: they must map 1:1 onto true identities
                assert labels.setdefault((split, r.identity), row["pid"]) == row["pid"]
            else:
                assert r.identity == row["pid"]
    for split in relabelled:  # and no two labels of a split share an identity
        identities = [pid for (s, _), pid in labels.items() if s == split]
        assert len(identities) == len(set(identities))


def test_sysu(tmp_path):
    root, truth = _world(tmp_path, "sysu", 10, images_per_camera=2)
    splits = load_dataset(root, "sysu")
    _check_against_truth(splits, truth, root)
    s = splits.summary()
    assert (s["train"]["identities"], s["query"]["identities"], s["gallery"]["identities"]) == (8, 2, 2)
    assert s["query"]["modalities"].keys() == {"ir"} and set(s["query"]["cameras"]) <= {3, 6}
    assert s["gallery"]["modalities"].keys() == {"rgb"} and set(s["gallery"]["cameras"]) <= {1, 2, 4, 5}
    assert sum(v["images"] for v in s.values()) == len(truth)  # every image is in exactly one split
    assert all(r.camera == int(r.path.parent.parent.name[3:]) for r in splits["train"])


def test_regdb_each_trial_splits_identities_in_half(tmp_path):
    root, truth = _world(tmp_path, "regdb", 6)
    trials = [load_dataset(root, "regdb", trial=t) for t in range(1, 11)]
    for splits in trials:
        _check_against_truth(splits, truth, root, relabelled={"train", "visible", "thermal"})
        s = splits.summary()
        assert s["train"] == {"images": 60, "identities": 3, "cameras": [1, 2], "modalities": {"ir": 30, "rgb": 30}}
        assert s["visible"] == {"images": 30, "identities": 3, "cameras": [1], "modalities": {"rgb": 30}}
        assert s["thermal"] == {"images": 30, "identities": 3, "cameras": [2], "modalities": {"ir": 30}}
    assert len({tuple(r.path for r in t["visible"]) for t in trials}) > 1  # trials differ


def test_llcm(tmp_path):
    root, truth = _world(tmp_path, "llcm", 6)
    splits = load_dataset(root, "llcm")
    _check_against_truth(splits, truth, root, relabelled={"train"})
    s = splits.summary()
    assert s["train"]["identities"] == 4 and s["train"]["modalities"].keys() == {"rgb", "ir"}
    assert s["test_vis"]["identities"] == 2 and s["test_vis"]["modalities"].keys() == {"rgb"}
    assert s["test_nir"]["modalities"].keys() == {"ir"} and 3 not in s["test_nir"]["cameras"]
    assert sum(v["images"] for v in s.values()) == len(truth)


def test_market(tmp_path):
    root, truth = _world(tmp_path, "market", 6)
    splits = load_dataset(root, "market")
    _check_against_truth(splits, truth, root)
    s = splits.summary()
    assert (s["train"]["images"], s["train"]["identities"]) == (27, 3)
    assert (s["query"]["images"], s["query"]["identities"]) == (9, 3)
    # 3 people x 3 cameras x 2 boxes, plus 2 distractors (pid 0); the 2 junk boxes (pid -1) are dropped
    assert s["gallery"]["images"] == 20 and 0 in {r.identity for r in splits["gallery"]}
    assert sum(1 for p in truth if p.split("/")[1].startswith("-1_")) == 2


def test_prcc_c_is_the_other_outfit(tmp_path):
    root, truth = _world(tmp_path, "prcc", 10)
    splits = load_dataset(root, "prcc")
    _check_against_truth(splits, truth, root)
    s = splits.summary()
    assert [s[k]["images"] for k in ("train", "val", "gallery", "query_same", "query_changed")] == [36, 6, 6, 6, 6]
    assert s["gallery"]["cameras"] == [0] and s["query_same"]["cameras"] == [1] and s["query_changed"]["cameras"] == [2]
    rendered = {r.path: truth[r.path.relative_to(root).as_posix()]["outfit"] for r in splits["train"]}
    for r in splits["train"]:  # the loader's outfit rule (A=B != C) agrees with what was rendered
        same = [o for p, o in rendered.items() if p.parent == r.path.parent and p.name[0] in "AB"]
        assert (rendered[r.path] in same) == (r.clothes.endswith("_AB"))


def test_ltcc(tmp_path):
    root, truth = _world(tmp_path, "ltcc", 6)
    splits = load_dataset(root, "ltcc")
    _check_against_truth(splits, truth, root)
    s = splits.summary()
    assert [s[k]["images"] for k in ("train", "query", "gallery")] == [32, 4, 12]
    assert max(max(v["cameras"]) for v in s.values()) <= 11  # 0-based
    for r in splits["query"]:  # every query has a clothes-changing positive in the gallery
        assert any(g.identity == r.identity and g.clothes != r.clothes for g in splits["gallery"])


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(f for f in root.rglob("*") if f.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_one_seed_renders_byte_identical_worlds_and_another_differs(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_world("sysu", tmp_path / name, identities=5, seed=seed, images_per_camera=1)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_a_wrong_layout_names_the_missing_file(tmp_path):
    root, _ = _world(tmp_path, "market", 4)
    with pytest.raises(DatasetError, match=f"not a SYSU-MM01 folder: missing {root}/cam1$"):
        load_dataset(root, "sysu")
    with pytest.raises(DatasetError, match="missing .*idx/test_id.txt"):
        load_dataset(root, "llcm")


def test_world_uris_render_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "cache"))
    first = load_dataset("world://market?identities=4&seed=3")
    marker = next((tmp_path / "cache" / "world").iterdir()) / "world" / "world.json"
    stamp = marker.stat().st_mtime_ns
    second = load_dataset("world://market?identities=4&seed=3")
    assert first.summary() == second.summary() and marker.stat().st_mtime_ns == stamp
    assert len(list((tmp_path / "cache" / "world").iterdir())) == 1  # no staging folder left behind


@pytest.mark.parametrize(
    "uri", ["world://mnist?identities=3", "world://sysu", "world://sysu?identities=x", "world://sysu?identities=4&ids=3"]
)
def test_bad_world_uris_are_refused(uri):
    with pytest.raises(FactoryError, match="bad world URI"):
        parse_world_uri(uri)


def test_outfits_is_for_the_ltcc_layout_only(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FactoryError, match="outfits=1: only the ltcc layout takes it"):
        load_dataset("world://sysu?identities=4&outfits=1")
    splits = load_dataset("world://ltcc?identities=6&seed=0&outfits=1")
    assert {r.clothes.split("_")[1] for s in ("train", "query", "gallery") for r in splits[s]} == {"1"}


def test_world_command(tmp_path):
    out = tmp_path / "prcc"
    result = run_cli("world", "--layout", "prcc", "--out", str(out), "--identities", "4", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "images/s" in result.stdout and (out / "prcc" / "rgb" / "test" / "C").is_dir()
    again = run_cli("world", "--layout", "prcc", "--out", str(out), "--identities", "4")
    assert again.returncode == 2 and again.stderr.strip() == f"error: {out} is not empty; choose a new folder"


def _oracle(records) -> FeatureSet:
    """Features that are the identity itself: every protocol must score them perfectly."""
    feats = np.zeros((len(records), 1000))
    feats[np.arange(len(records)), [r.identity % 1000 for r in records]] = 1.0
    return FeatureSet.from_records(records, feats)


def test_protocols_on_loaded_worlds_score_oracle_features_perfectly(tmp_path):
    scores = []
    sysu = load_dataset(_world(tmp_path, "sysu", 8)[0], "sysu")
    scores.append(p.evaluate_sysu(_oracle(sysu["query"]), _oracle(sysu["gallery"]), mode="all"))
    regdb = load_dataset(_world(tmp_path, "regdb", 4)[0], "regdb", trial=3)
    scores.append(p.evaluate_regdb(_oracle(regdb["visible"]), _oracle(regdb["thermal"]), "thermal_to_visible"))
    llcm = load_dataset(_world(tmp_path, "llcm", 6)[0], "llcm")
    scores.append(p.evaluate_llcm(_oracle(llcm["test_vis"]), _oracle(llcm["test_nir"]), "ir_to_vis"))
    market = load_dataset(_world(tmp_path, "market", 6)[0], "market")
    scores.append(p.evaluate_market(_oracle(market["query"]), _oracle(market["gallery"])))
    prcc = load_dataset(_world(tmp_path, "prcc", 6)[0], "prcc")
    prcc_scores = p.evaluate_prcc(_oracle(prcc["gallery"]), _oracle(prcc["query_same"]), _oracle(prcc["query_changed"]))
    scores += prcc_scores.values()
    ltcc = load_dataset(_world(tmp_path, "ltcc", 6)[0], "ltcc")
    scores.append(p.evaluate_clothes_changing(_oracle(ltcc["query"]), _oracle(ltcc["gallery"]), mode="cc"))
    for s in scores:
        assert (s.rank1, s.mAP, s.mINP) == (1.0, 1.0, 1.0) and s.valid_queries > 0
