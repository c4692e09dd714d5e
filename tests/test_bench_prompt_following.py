"""The prompt-following measure end to end at its smallest: every generator runs, the judge reads every variant."""

from __future__ import annotations

import json

import pytest
import torch

from experiments import prompt_following


def test_agreement_compares_colours_exactly_and_garments_as_a_parser_labels_them():
    wanted = {"top_colour": "red", "top": "tshirt", "bottom_colour": "navy", "bottom": "pants"}
    read = {"top_colour": "red", "top": "sweater", "bottom_colour": "blue", "bottom": "shorts"}
    shares = prompt_following.agreement([read], [wanted])
    assert shares["top_colour"] == 1 and shares["bottom_colour"] == 0 and shares["colours"] == 0
    assert shares["top"] == 1 and shares["bottom"] == 1 and shares["garments"] == 1  # same LIP labels
    assert prompt_following.agreement([read | {"top": "coat"}], [wanted])["top"] == 0
    words = "any any any any any any any any red plain none cotton tshirt navy denim pants black any any"
    assert prompt_following.prompt_words(f"a rgb photo of a {words} person") == wanted


@pytest.mark.slow
def test_every_generator_is_judged_and_keeps_the_pixels_outside_the_mask(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        result = prompt_following.main(["--identities", "8", "--variants", "1", "--steps", "2", "--judge-images",
                                        "64", "--judge-steps", "20", "--work", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    table = result["table"]
    assert list(table)[1:] == list(prompt_following.GENERATORS)
    for name in prompt_following.GENERATORS:
        assert table[name]["images"] > 0 and table[name]["outside_mask_untouched"] == table[name]["images"]
        assert all(0 <= table[name][k] <= 1 for k in ("top_colour", "colours", "garments", "all"))
    assert (tmp_path / "sheet.png").is_file()
