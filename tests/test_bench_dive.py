"""DiVE-on-the-world benchmark: its pieces by hand, and the whole script on the smallest settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from factory.bench import dive_world, identity_slot
from factory.reid.data import TrainSet, concat_trainsets


def _set(labels: list[int], modality: str = "rgb", variants: dict[int, list[int]] | None = None) -> TrainSet:
    n = len(labels)
    images = np.stack([np.full((4, 2, 3), 10 * i, np.uint8) for i in range(n)])
    is_variant = np.zeros(n, bool)
    for owned in (variants or {}).values():
        is_variant[owned] = True
    return TrainSet(images=images, labels=np.array(labels), cameras=np.ones(n, int), modalities=[modality] * n,
                    clothes=[None] * n, synthetic=np.zeros(n, bool), names=[str(i) for i in range(n)],
                    is_variant=is_variant, variants=variants or {})


def test_roc_auc_by_hand():
    # same {0.9, 0.4}, different {0.5, 0.1}: pairs won 0.9>0.5, 0.9>0.1, 0.4>0.1; lost 0.4<0.5 → 3/4.
    assert dive_world.roc_auc(np.array([0.9, 0.4]), np.array([0.5, 0.1])) == pytest.approx(0.75)
    assert dive_world.roc_auc(np.array([0.5, 0.5]), np.array([0.5])) == pytest.approx(0.5)  # ties count half
    assert dive_world.roc_auc(np.array([0.1]), np.array([0.2, 0.3])) == 0.0
    rng = np.random.default_rng(0)
    for _ in range(50):  # against the definition, with many ties
        same, different = rng.integers(0, 4, size=rng.integers(1, 9)), rng.integers(0, 4, size=rng.integers(1, 9))
        pairs = [(s > d) + 0.5 * (s == d) for s in same for d in different]
        assert dive_world.roc_auc(same.astype(float), different.astype(float)) == pytest.approx(np.mean(pairs))


def test_concat_shifts_variant_indices():
    first, second = _set([1, 2]), _set([3, 3, 3], variants={0: [1, 2]})
    both = concat_trainsets(first, second)
    assert both.labels.tolist() == [1, 2, 3, 3, 3]
    assert both.variants == {2: [3, 4]} and both.is_variant.tolist() == [False, False, False, True, True]
    assert np.array_equal(both.images[3], second.images[1])


def test_shuffled_labels_give_every_person_someone_else_s_images():
    part = _set([5, 5, 7, 9, 9, 9], modality="ir")
    moved = dive_world.shuffled(part, seed=0)
    mapping = dict(zip(part.labels.tolist(), moved.labels.tolist()))
    assert sorted(mapping.values()) == [5, 7, 9] and all(a != b for a, b in mapping.items())
    assert np.array_equal(moved.images, part.images)


def test_grey_as_ir_is_grey_and_in_the_ir_stream():
    part = _set([1, 2])
    part.images[1, ..., 0] = 200  # a red-ish pixel block
    grey = dive_world.grey_as_ir(part)
    assert grey.modalities == ["ir", "ir"]
    assert (grey.images[..., 0] == grey.images[..., 1]).all() and (grey.images[..., 1] == grey.images[..., 2]).all()
    assert grey.images[1, 0, 0, 0] == round(0.299 * 200 + 0.587 * 10 + 0.114 * 10)


def test_the_whole_benchmark_runs_on_the_smallest_settings(tmp_path):
    threads = torch.get_num_threads()
    try:
        result = dive_world.main(["--work", str(tmp_path), "--seeds", "0", "--finetune-steps", "2",
                                  "--new-identities", "2", "--ir-per-identity", "1", "--steps", "2",
                                  "--epochs", "1", "--jobs", "1"])
    finally:
        torch.set_num_threads(threads)
    assert set(result["reid"]) == {"A", "A+B rgb (grey as IR)", "A+B rgb+B gen IR", "A+B rgb+B gen IR, shuffled",
                                   "A+B rgb+B rendered IR", "A+new people", "A+new people, control"}
    for row in result["reid"].values():
        assert all(0 <= row[m][0] <= 1 for m in ("mAP", "rank1"))
    assert len(result["identity_auc"]) == 5
    assert all(0 <= mean <= 1 and not math.isnan(mean) for mean, _ in result["identity_auc"].values())
    for name in ("b-ir", "b-ir-control", "new", "new-control"):
        assert (tmp_path / name / "_SUCCESS.json").is_file()


def test_identity_slot_benchmark_measures_both_distances():
    threads = torch.get_num_threads()
    try:
        result = identity_slot.main(["--model", "tiny", "--identities", "2", "--seeds", "2", "--steps", "2",
                                     "--cameras", "cam1", "--width", "32", "--height", "64"])
    finally:
        torch.set_num_threads(threads)
    assert result["across_identities"] > 0 and result["across_seeds"] > 0  # the tiny preset reads its slot too
    assert result["ratio"] == pytest.approx(result["across_identities"] / result["across_seeds"], abs=2e-3)
