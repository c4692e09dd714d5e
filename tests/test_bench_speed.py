"""The speed-identity sweep at its smallest: every point generates, is timed and is scored by the oracle."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from benchmarks import speed_identity


def test_points_are_parsed_and_bad_ones_named():
    assert speed_identity.parse_point("dpm++:10") == {"scheduler": "dpm++", "steps": 10, "dtype": "float32"}
    assert speed_identity.parse_point("ddim:4:bfloat16")["dtype"] == "bfloat16"
    assert speed_identity.parse_point("lcm:4")["scheduler"] == "lcm"
    for bad in ("pndm:4", "dpm++:x", "dpm++:4:float16"):
        with pytest.raises(argparse.ArgumentTypeError, match="SCHEDULER:STEPS"):
            speed_identity.parse_point(bad)


@pytest.mark.slow
def test_the_sweep_times_and_scores_every_point(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        result = speed_identity.main(["--quick", "--dive-work", str(tmp_path / "dive"), "--work", str(tmp_path / "si"),
                                      "--points", "dpm++:50", "dpm++:5:bfloat16", "lcm:2", "--people", "3"])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert list(result["points"]) == ["dpm++:50", "dpm++:5:bfloat16", "lcm:2"] and result["people"] == 3
    reference, fast = result["points"]["dpm++:50"], result["points"]["dpm++:5:bfloat16"]
    assert reference["speedup"] == 1.0 and reference["auc_change"] == 0.0
    assert fast["speedup"] > 1.5  # a tenth of the UNet passes
    assert result["points"]["lcm:2"]["speedup"] > fast["speedup"]  # two single passes: a fifth of fast's
    distilled = json.loads((tmp_path / "si" / "distill" / "model" / "model.json").read_text())
    assert distilled["sampler"]["scheduler"] == "lcm" and distilled["steps"] == 8
    assert fast["auc_change"] == pytest.approx(fast["auc"] - reference["auc"], abs=1e-4)
    assert all(0 <= row["auc"] <= 1 and row["identities"] == 3 for row in result["points"].values())
    assert not (tmp_path / "si" / "warm-up").exists()
