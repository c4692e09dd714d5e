"""Fine-tuning inputs: training set, captions, camera codes, image tensors, new identities."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from factory.dive.finetune.captions import CAPTION_TEMPLATES, camera_codes, caption, identity_token
from factory.dive.finetune.images import load_training_image
from factory.dive.finetune.new_identities import append_new_identities, sample_new_identities
from factory.dive.finetune.trainset import DatasetSource, build_finetune_set, read_mapping
from factory.errors import FactoryError
from factory.models.bank import IdentityBank

SYSU = "world://sysu?identities=6&seed=0"
MARKET = "world://market?identities=6&seed=0"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "cache"))


def _sources() -> list[DatasetSource]:
    return [DatasetSource(SYSU), DatasetSource(MARKET, single_camera="cam7")]


def _fake_market(root: Path, images: dict[str, tuple[int, int] | None]) -> Path:
    """A hand-made Market-1501 folder: name -> (width, height), or None for an unreadable file."""
    for folder in ("bounding_box_train", "bounding_box_test", "query"):
        (root / folder).mkdir(parents=True)
    for name, size in images.items():
        path = root / "bounding_box_train" / name
        if size is None:
            path.write_bytes(b"not a jpeg")
        else:
            Image.new("RGB", size, (200, 30, 30)).save(path)
    return root


# ---- training set ------------------------------------------------------------------------


def test_trainset_renumbers_and_keys_cameras(cache, tmp_path):
    ts = build_finetune_set(_sources(), first_id=100)
    ids = ts.identities()
    assert ids == list(range(100, 100 + len(ids)))  # unique and consecutive
    assert {i for i in ids if ts.sources[i][0] == "sysu"} == set(range(100, 104))  # SYSU first, then Market
    assert [ts.sources[i] for i in ids] == [("sysu", p) for p in (1, 2, 3, 4)] + [("market", p) for p in (1, 2, 3)]
    assert {image.identity for image in ts.images} == set(ids)
    assert ts.images == sorted(ts.images, key=lambda i: (i.identity, i.camera, str(i.path)))
    assert ts.cameras == {
        **{f"sysu:cam{c}": "rgb" for c in (1, 2, 4, 5)},
        "sysu:cam3": "ir",
        "sysu:cam6": "ir",
        "market:cam7": "rgb",
    }
    assert all(ts.cameras[image.camera] == image.modality for image in ts.images)
    assert ts.dropped == {}

    ts.write_mapping(tmp_path / "out" / "mapping.parquet")
    assert read_mapping(tmp_path / "out" / "mapping.parquet") == ts.sources


def test_trainset_refuses_excluded_identities(cache):
    # SYSU's train and test ids are disjoint, so excluding its test splits passes...
    build_finetune_set([DatasetSource(SYSU)], exclude=[DatasetSource(SYSU, split="query")])
    # ...but training on Market's query people while excluding its gallery does not.
    clash = r"3 training identities are also in the excluded split 'gallery' of world://market.* \(pids 4, 5, 6\)"
    with pytest.raises(FactoryError, match=f"market: {clash}"):
        build_finetune_set([DatasetSource(MARKET, split="query")], exclude=[DatasetSource(MARKET, split="gallery")])
    with pytest.raises(FactoryError, match=f"mkt: {clash}"):  # renaming the source does not hide it
        build_finetune_set(
            [DatasetSource(MARKET, split="query", name="mkt")], exclude=[DatasetSource(MARKET, "market", "gallery")]
        )


def test_trainset_filters_and_names_empty_identities(tmp_path):
    root = _fake_market(
        tmp_path / "market",
        {"0001_c1s1_000001_01.jpg": (32, 64), "0002_c1s1_000002_01.jpg": (64, 32), "0002_c2s1_000003_01.jpg": None},
    )
    with pytest.raises(FactoryError) as e:
        build_finetune_set([DatasetSource(str(root), layout="market")])
    assert (
        str(e.value) == "market pid 2 has no images left after filtering (1 aspect, 1 unreadable; kept only H >= 2 W)"
    )

    Image.new("RGB", (30, 60)).save(root / "bounding_box_train" / "0002_c3s1_000004_01.jpg")
    ts = build_finetune_set([DatasetSource(str(root), layout="market", name="mkt")])
    assert ts.dropped == {"aspect": 1, "unreadable": 1}
    assert [(i.identity, i.camera, i.path.name) for i in ts.images] == [
        (0, "mkt:cam1", "0001_c1s1_000001_01.jpg"),
        (1, "mkt:cam3", "0002_c3s1_000004_01.jpg"),
    ]


def test_trainset_refuses_an_empty_dataset(tmp_path):
    root = _fake_market(tmp_path / "market", {})
    with pytest.raises(FactoryError, match=r"split 'train' of market has no images"):
        build_finetune_set([DatasetSource(str(root), layout="market")])


# ---- captions and codes ------------------------------------------------------------------


def test_camera_codes_are_seeded_and_disjoint():
    cameras = ["sysu:cam1", "sysu:cam3", "market:cam7"]
    codes = camera_codes(cameras, seed=42)
    assert codes == camera_codes(list(reversed(cameras)), seed=42)  # order of the input does not matter
    assert codes != camera_codes(cameras, seed=43)
    assert set(codes) == set(cameras)
    assert all(re.fullmatch(r"[A-Za-z0-9]{4}", code) for code in codes.values())
    letters = "".join(codes.values())
    assert len(set(letters)) == len(letters)
    assert len(camera_codes([f"c{i}" for i in range(15)], seed=0)) == 15  # 15 x 4 <= 62
    with pytest.raises(FactoryError, match="cannot give 16 cameras distinct 4-character codes"):
        camera_codes([f"c{i}" for i in range(16)], seed=0)


def test_captions():
    assert identity_token(534) == "<class_534>"
    assert len(CAPTION_TEMPLATES) == 27 == len(set(CAPTION_TEMPLATES))
    assert all(t.count("{}") == 2 and t.startswith("a ") for t in CAPTION_TEMPLATES)
    rng = random.Random(0)
    drawn = [caption("W5Eq", "<class_7>", rng) for _ in range(4000)]
    with_identity = [c for c in drawn if c != "W5Eq"]
    assert 0.45 < len(with_identity) / len(drawn) < 0.55
    filled = {t.format("W5Eq", "<class_7> person") for t in CAPTION_TEMPLATES}
    assert set(with_identity) == filled  # every template used, filled exactly
    assert "a W5Eq photo of a <class_7> person" in filled
    assert caption("W5Eq", "<class_7>", random.Random(0), p_identity=0.0) == "W5Eq"


# ---- images ------------------------------------------------------------------------------


def test_load_training_image(tmp_path):
    pixels = np.zeros((100, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white, right half black
    Image.fromarray(pixels).save(tmp_path / "a.png")
    x = load_training_image(tmp_path / "a.png")
    assert x.shape == (3, 512, 256) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert x[:, :, 0].eq(1).all() and x[:, :, -1].eq(-1).all()
    flipped = load_training_image(tmp_path / "a.png", width=64, height=128, flip=True)
    assert flipped.shape == (3, 128, 64)
    assert torch.equal(flipped, load_training_image(tmp_path / "a.png", width=64, height=128).flip(-1))
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(FactoryError, match=r"cannot read training image .*bad\.jpg"):
        load_training_image(tmp_path / "bad.jpg")


# ---- new identities ----------------------------------------------------------------------


def _bank(n: int = 40, dim: int = 16) -> IdentityBank:
    vectors = np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)
    return IdentityBank.from_vectors(range(n), vectors, sources=[("sysu", i + 1) for i in range(n)])


def _min_distances(bank: IdentityBank, new) -> tuple[float, float]:
    new_vectors = np.stack([n.vector for n in new]).astype(np.float64)
    to_real = np.linalg.norm(new_vectors[:, None] - bank.vectors[None].astype(np.float64), axis=2)
    between = np.linalg.norm(new_vectors[:, None] - new_vectors[None], axis=2)
    np.fill_diagonal(between, np.inf)
    return float(to_real.min()), float(between.min())


@pytest.mark.parametrize("method,n", [("gaussian", 40), ("gaussian", 8), ("interpolate", 40)])  # 8 < dim + 1: diagonal
def test_new_identities_keep_their_distance(method, n):
    bank = _bank(n)
    new = sample_new_identities(bank, 12, method=method, min_distance=2.0, seed=3)
    assert len(new) == 12 and all(x.method == method for x in new)
    assert min(_min_distances(bank, new)) >= 2.0
    for x in new:
        distances = np.linalg.norm(bank.vectors - x.vector, axis=1)
        assert x.nearest == bank.identities[int(distances.argmin())]
        assert x.distance == pytest.approx(float(distances.min()))
        if method == "interpolate":
            assert len(set(x.parents)) == 2 and 0.25 <= x.weight <= 0.75
            a, b = (bank.vector(p) for p in x.parents)
            norm = (1 - x.weight) * np.linalg.norm(a) + x.weight * np.linalg.norm(b)
            assert np.linalg.norm(x.vector) == pytest.approx(norm, rel=1e-5)
        else:
            assert x.parents == () and x.weight is None
    again = sample_new_identities(bank, 12, method=method, min_distance=2.0, seed=3)
    assert all(np.array_equal(x.vector, y.vector) and x.parents == y.parents for x, y in zip(new, again))
    other = sample_new_identities(bank, 12, method=method, min_distance=2.0, seed=4)
    assert not np.array_equal(new[0].vector, other[0].vector)


def test_new_identities_refuse_an_impossible_distance():
    with pytest.raises(
        FactoryError, match=r"found no sample >= 1000 .* in 50 tries \(farthest reached [\d.]+; .*smaller min_distance"
    ):
        sample_new_identities(_bank(), 1, method="interpolate", min_distance=1000, seed=0, max_tries=50)
    with pytest.raises(FactoryError, match="unknown new-identity method"):
        sample_new_identities(_bank(), 1, method="copy", min_distance=1, seed=0)


def test_appended_identities_record_provenance(tmp_path):
    bank = _bank()
    new = sample_new_identities(bank, 3, method="interpolate", min_distance=1.0, seed=0)
    grown = append_new_identities(bank, new, first_id=1000)
    assert grown.identities == [*range(40), 1000, 1001, 1002]
    assert grown.tokens[-3:] == ["<class_1000>", "<class_1001>", "<class_1002>"]
    assert grown.sources[-3:] == [None] * 3 and grown.sources[:40] == bank.sources
    grown.save(tmp_path / "bank.safetensors")
    loaded = IdentityBank.load(tmp_path / "bank.safetensors")
    assert loaded.provenance[:40] == [None] * 40
    assert loaded.provenance[40] == {
        "method": "interpolate",
        "parents": list(new[0].parents),
        "weight": new[0].weight,
        "nearest": new[0].nearest,
        "distance": new[0].distance,
    }
    assert np.array_equal(loaded.vector(1002), new[2].vector)
    with pytest.raises(FactoryError, match="appears more than once"):
        append_new_identities(bank, new, first_id=39)


def test_banks_without_provenance_still_load(tmp_path):
    from safetensors.numpy import save_file

    meta = {"identities": "[5]", "tokens": '["<class_5>"]', "sources": "[null]"}  # a bank from before provenance
    save_file({"vectors": np.ones((1, 4), np.float32)}, str(tmp_path / "old.safetensors"), metadata=meta)
    assert IdentityBank.load(tmp_path / "old.safetensors").provenance == [None]
