"""The DLCR world benchmark end to end at the tiniest settings: every stage runs, every arm reports."""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments import dlcr_world

TINY = ["--identities", "6", "--seeds", "0", "--epochs", "1", "--variants", "1", "--query-variants", "1",
        "--steps", "1", "--p", "2", "--k", "2", "--height", "64", "--width", "32", "--jobs", "2"]
METRICS = {"rank1", "mAP"}
SPLITS = {"same_clothes", "clothes_changing", "clothes_changing_refined", "clothes_changing_refined_flipped"}


@pytest.mark.slow
def test_dlcr_world_benchmark_reports_every_arm(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path / "cache"))  # the world and nothing else, rendered here
    argv = [*TINY, "--work", str(tmp_path / "work")]
    threads = torch.get_num_threads()
    try:  # main() sets one torch thread, which must not leak into other tests
        result = dlcr_world.main(argv)
        first = capsys.readouterr().out
        again = dlcr_world.main(argv)  # every stage cached: nothing is redone
        second = capsys.readouterr().out
        gated = dlcr_world.main([*argv, "--arms", "real+variants", "--gate-scorer", "world", "--gate-thresholds", "-1"])
    finally:
        torch.set_num_threads(threads)

    assert json.loads(first.strip().splitlines()[-1]) == result
    assert set(result["results"]) == set(result["per_seed"]) == set(dlcr_world.ARMS)
    for arm, row in result["results"].items():
        assert set(row) == SPLITS, arm
        for split, metrics in row.items():
            assert set(metrics) == METRICS
            for mean, std in metrics.values():
                assert math.isfinite(mean) and 0 <= mean <= 1 and std == 0, (arm, split)  # one seed
    for arm, rows in result["per_seed"].items():
        assert [r["seed"] for r in rows] == [0]
        for split in SPLITS:
            assert all(math.isfinite(rows[0][split][m]) and 0 <= rows[0][split][m] <= 1 for m in METRICS), (arm, split)
    # every inpaint run finished: one variant per training image and per changed-clothes query
    assert result["inpaint"]["train"]["samples"] == result["splits"]["train"]
    assert result["inpaint"]["query"]["samples"] == result["splits"]["query_changed"]
    assert result["inpaint"]["recoloured"]["samples"] == result["splits"]["train"]  # the control, same sources
    assert result["batches_per_epoch"] >= 1 and result["finite"]
    assert "inpaint train" in first and first.count("(cached)") == 0
    assert second.count("(cached)") == len(dlcr_world.ARMS)
    assert not any(line.startswith("inpaint ") for line in second.splitlines())
    assert again["results"] == result["results"]
    # A gate at -1 keeps every scored variant: the gated arm trains on real+variants' very images.
    assert gated["arms"] == ["real+variants", "real+variants, gated at -1"]
    assert gated["per_seed"]["real+variants, gated at -1"] == result["per_seed"]["real+variants"]
