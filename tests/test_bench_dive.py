"""DiVE-on-the-world benchmark: its pieces by hand, and the whole script on the smallest settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiments import dive_world, identity_slot, label_contrast
from factory.reid.data import TrainSet, concat_trainsets
from factory.reid.oracle import ORACLE
from manifests import Run


def _set(labels: list[int], modality: str = "rgb", variants: dict[int, list[int]] | None = None) -> TrainSet:
    n = len(labels)
    images = np.stack([np.full((4, 2, 3), 10 * i, np.uint8) for i in range(n)])
    is_variant = np.zeros(n, bool)
    for owned in (variants or {}).values():
        is_variant[owned] = True
    return TrainSet(images=images, labels=np.array(labels), cameras=np.ones(n, int), modalities=[modality] * n,
                    clothes=[None] * n, synthetic=np.zeros(n, bool), names=[str(i) for i in range(n)],
                    is_variant=is_variant, variants=variants or {})


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


@pytest.mark.slow
@pytest.mark.skipif(not (ORACLE / "model.json").is_file(), reason="no shipped oracle")
def test_the_whole_benchmark_runs_on_the_smallest_settings(tmp_path):
    threads = torch.get_num_threads()
    argv = ["--work", str(tmp_path), "--seeds", "0", "--sysu-identities", "20", "--market-identities", "8",
            "--a-people", "4", "--finetune-steps", "2", "--ir-per-identity", "1", "--steps", "2", "--epochs", "1",
            "--batches-per-epoch", "2", "--jobs", "1", "--gate-scorer", "world", "--gate-thresholds", "-1"]
    try:
        result = dive_world.main(argv)
        saved = json.loads((tmp_path / "result.json").read_text())  # each call writes its own result
        some = dive_world.main([*argv, "--arms", "A+B rgb+B gen IR, gated at -1"])  # every arm cached by now
        with pytest.raises(SystemExit):
            dive_world.main([*argv, "--arms", "no such arm"])
    finally:
        torch.set_num_threads(threads)
    assert list(some["reid"]) == ["A", "A+B rgb+B gen IR, gated at -1"]  # A is always kept: gains are over it
    assert some["per_seed"]["A+B rgb+B gen IR, gated at -1"] == result["per_seed"]["A+B rgb+B gen IR, gated at -1"]
    assert some["reid"]["A+B rgb+B gen IR, gated at -1"]["mAP_recovered"] is None  # no ceiling arm to recover
    assert list(result["reid"]) == ["A", "A+B rgb (grey as IR)", "A+B rgb+B gen IR", "control: gen IR, shuffled",
                                    "control: base IR, no identity", "ceiling: rendered IR",
                                    "A+B rgb+B gen IR, gated at -1"]
    # Every scored image passes a gate at -1 (an unscored one would not): the ungated arm's images, so its result.
    assert result["per_seed"]["A+B rgb+B gen IR, gated at -1"] == result["per_seed"]["A+B rgb+B gen IR"]
    assert result["settings"]["a_people"] == 4 and result["settings"]["b_people"] == 4
    a, ceiling = result["per_seed"]["A"][0], result["per_seed"]["ceiling: rendered IR"][0]
    row = result["reid"]["ceiling: rendered IR"]
    assert row["mAP_gain"][0] == pytest.approx(ceiling["mAP"] - a["mAP"], abs=1e-4)
    assert row["mAP_recovered"] in (1.0, None)  # the ceiling recovers all of its own gain
    assert set(result["identity"]["oracle"]) == {"fine-tuned generator", "control: base, no identity",
                                                 "world renders (ceiling)"}
    assert result["identity"]["oracle"]["fine-tuned generator"]["identities"] == 4
    assert saved["reid"] == result["reid"]
    for name in ("b-ir", "b-ir-control"):
        assert (tmp_path / name / "_SUCCESS.json").is_file()
    control = Run(str(tmp_path / "b-ir-control")).table()
    ir_prompts = {p for p, m in zip(control["prompt"].to_pylist(), control["modality"].to_pylist()) if m == "ir"}
    assert ir_prompts <= {"a cam3 photo of a  person", "a cam6 photo of a  person"}  # nobody in particular


def test_identity_slot_benchmark_measures_both_distances():
    threads = torch.get_num_threads()
    try:
        result = identity_slot.main(["--model", "tiny", "--vectors", "--identities", "2", "--seeds", "2",
                                     "--steps", "2", "--cameras", "cam1", "--width", "32", "--height", "64"])
    finally:
        torch.set_num_threads(threads)
    assert result["across_identities"] > 0 and result["across_seeds"] > 0  # the tiny preset reads its slot too
    assert result["ratio"] == pytest.approx(result["across_identities"] / result["across_seeds"], abs=2e-3)


@pytest.mark.slow  # kept out of the quick loop's 3 minutes
def test_identity_carrying_ir_teaches_what_shuffled_ir_does_not(capsys):
    """The experiment's core contrast at the smallest scale (`experiments.label_contrast`, defaults):
    the same IR images with their people's labels, or deranged, next to those people's RGB."""
    result = label_contrast.main([])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    auc = result["auc"]
    assert auc["true labels"] > auc["shuffled labels"] + 0.1  # measured 0.827 vs 0.508 (BENCHMARKS.md)
