"""DLCR's inputs: clothing masks from three parsers, outfit prompts from three sources, targets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_hf import build_llm, build_segformer, build_vlm

from factory.datasets import load_dataset
from factory.dlcr.masks import LIP_KEEP, LabelMapFolder, LabelRule, MaskError, clothes_mask, make_parser
from factory.dlcr.spec import DescriberSpec, InpaintSpec, MaskSpec
from factory.dlcr.targets import TargetSampler
from factory.dlcr.wardrobe import (
    DescriberConfig,
    OutfitDescriber,
    Wardrobe,
    cached_wardrobe,
    describer_fingerprint,
    file_wardrobe,
    outfit_groups,
    parse_items,
    prompt_from_items,
    world_wardrobe,
)
from factory.errors import FactoryError
from factory.spec import load_spec
from factory.world import LIP
from factory.world.captions import CLOTHING_SLOTS, SLOTS, VOCABULARY

WORLD = "world://prcc?identities=8&seed=0"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def prcc(tmp_path_factory):
    """The training split of a PRCC-like world: 5 identities, 2 outfits each (A/B and C)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FACTORY_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield load_dataset(WORLD)
    mp.undo()


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {
        "segformer": build_segformer(root / "segformer"),
        "vlm": build_vlm(root / "vlm"),
        "llm": build_llm(root / "llm"),
    }


def _image(record) -> Image.Image:
    with Image.open(record.path) as image:
        return image.convert("RGB")


def _relative(prcc, record) -> str:
    return record.path.relative_to(prcc.root).as_posix()


# ---- masks ----------------------------------------------------------------------------


def test_dlcr_rule_inpaints_exactly_the_clothing_labels():
    labels = np.arange(20).reshape(4, 5)
    mask = clothes_mask(labels, LabelRule())
    assert {int(v) for v in labels[mask]} == {3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18, 19}
    assert {int(v) for v in labels[~mask]} == set(LIP_KEEP)
    explicit = clothes_mask(labels, LabelRule(clothes=frozenset({5, 9})))
    assert {int(v) for v in labels[explicit]} == {5, 9}


def test_dilation_grows_the_mask_by_its_radius():
    labels = np.zeros((9, 9), np.uint8)
    labels[4, 4] = LIP["upper-clothes"]
    assert clothes_mask(labels, LabelRule()).sum() == 1
    assert clothes_mask(labels, LabelRule(), dilation=1).sum() == 9
    assert clothes_mask(labels, LabelRule(), dilation=2).sum() == 25


def test_world_masks_cover_the_clothes_and_keep_face_and_hair(prcc):
    parser = make_parser(MaskSpec(source="world"), prcc.root)
    parser.check()
    record = prcc["train"][0]
    image = _image(record)
    labels = parser.labels(_relative(prcc, record), image)
    assert labels.shape == (image.height, image.width)
    mask = clothes_mask(labels, parser.rule)
    assert 0 < mask.mean() < 0.6
    assert not mask[np.isin(labels, [LIP["face"], LIP["hair"], LIP["background"]])].any()
    assert mask[labels == LIP["upper-clothes"]].all() or mask[labels == LIP["dress"]].all()


def test_a_label_map_of_the_wrong_size_is_a_clear_error(prcc, tmp_path):
    record = prcc["train"][0]
    relative = _relative(prcc, record)
    target = tmp_path / Path(relative).with_suffix(".png")
    target.parent.mkdir(parents=True)
    Image.new("L", (10, 20)).save(target)
    parser = LabelMapFolder(tmp_path, LabelRule())
    with pytest.raises(MaskError, match=r"label map .* is 10x20 but its image .* is 64x128"):
        parser.labels(relative, _image(record))
    Image.new("RGB", (64, 128)).save(target)
    with pytest.raises(MaskError, match="has mode RGB"):
        parser.labels(relative, _image(record))
    with pytest.raises(MaskError, match="no label map for"):
        parser.labels("prcc/rgb/train/001/other.jpg", _image(record))
    with pytest.raises(MaskError, match="leaves"):
        parser.labels("../../etc/passwd", _image(record))
    with pytest.raises(MaskError, match="no label-map folder"):
        LabelMapFolder(tmp_path / "absent", LabelRule()).check()


def test_segmentation_model_parser_reads_clothes_from_its_label_names(prcc, hf_models):
    parser = make_parser(MaskSpec(source="model", path=str(hf_models["segformer"])), prcc.root)
    parser.check()
    assert parser.rule.clothes == frozenset({3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18, 19})
    parser.setup()
    image = _image(prcc["train"][0])
    labels = parser.labels("x.jpg", image)
    assert labels.shape == (128, 64) and labels.min() >= 0 and labels.max() < 20


def test_a_parser_whose_labels_name_no_clothing_is_a_clear_error(prcc, tmp_path):
    body = build_segformer(tmp_path / "parts", ["background", "head", "torso", "arms", "legs"])
    with pytest.raises(MaskError, match=r"the parser's labels name no clothing \(0=background, 1=head.*clothes_labels"):
        make_parser(MaskSpec(source="model", path=str(body)), prcc.root).check()
    with pytest.raises(MaskError, match=r"clothes_labels \[7\] are not labels of the parser"):
        make_parser(MaskSpec(source="model", path=str(body), clothes_labels=[2, 7]), prcc.root).check()
    explicit = make_parser(MaskSpec(source="model", path=str(body), clothes_labels=[2]), prcc.root)
    explicit.check()
    assert explicit.rule.clothes == frozenset({2})


# ---- prompts and wardrobes ----------------------------------------------------------------


def test_dlcr_parse_and_prompt():
    answer = (
        "Sure! Here are the clothing items mentioned in the text:\n\n"
        "1. Blue jeans\n2. White T-shirt, short sleeves\n3. a\n4. Black leather shoes"
    )
    items = parse_items(answer)
    assert items == ["Blue jeans", "White T-shirt, short sleeves", "a", "Black leather shoes"]
    assert prompt_from_items(items) == "blue jeans white t-shirt short sleeves black leather shoes"
    assert parse_items("no list at all") == []


def test_world_wardrobe_describes_each_outfit_once(prcc):
    groups = outfit_groups(prcc["train"], prcc.root)
    wardrobe = world_wardrobe(prcc.root, groups)
    ids = {r.identity for r in prcc["train"]}
    assert set(wardrobe.outfits) == {f"{p}_{s}" for p in ids for s in ("AB", "C")}
    one = wardrobe.outfits[groups[0].outfit]
    assert one.identity == groups[0].identity and len(one.items) >= 2
    # The prompt is in the world models' words: the outfit's clothing slots, every other slot open.
    words = one.prompt.removeprefix("a rgb photo of a ").removesuffix(" person").split()
    assert len(words) == len(SLOTS)
    for slot, word in zip(SLOTS, words):
        assert (word in VOCABULARY) and (word == "any") == (slot not in CLOTHING_SLOTS), (slot, word)
    top_colour = words[SLOTS.index("top_colour")]
    assert top_colour in one.items[0].lower()  # the first item is the top, named by its colour


def test_wardrobe_files_round_trip_and_bad_rows_are_named(tmp_path):
    lines = [
        {"outfit": "1_AB", "identity": 1, "items": ["Red coat", "Blue jeans"]},
        {"outfit": "2_C", "identity": 2, "items": ["Gray dress"]},
    ]
    jsonl = tmp_path / "w.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in lines))
    wardrobe = file_wardrobe(str(jsonl))
    assert wardrobe.outfits["1_AB"].prompt == "red coat blue jeans"
    wardrobe.save(str(tmp_path / "w.parquet"))
    assert file_wardrobe(str(tmp_path / "w.parquet")) == wardrobe
    jsonl.write_text(json.dumps({"outfit": "1_AB", "identity": "one", "items": []}) + "\n")
    with pytest.raises(FactoryError, match=r"w.jsonl: outfit 1: identity: Input should be a valid integer"):
        file_wardrobe(str(jsonl))
    with pytest.raises(FactoryError, match="no wardrobe file at"):
        file_wardrobe(str(tmp_path / "absent.jsonl"))


def in_process(describer: OutfitDescriber):
    """Describe every outfit at once on `describer`, in this process."""
    return lambda outfits, keep: keep(describer.describe(outfits))


def test_model_descriptions_are_cached_so_a_rerun_asks_no_model(prcc, hf_models, tmp_path):
    spec = DescriberSpec(
        vlm=str(hf_models["vlm"]),
        llm=str(hf_models["llm"]),
        images_per_outfit=2,
        vlm_max_new_tokens=6,
        llm_max_new_tokens=8,
    )
    groups = outfit_groups(prcc["train"], prcc.root)[:3]
    fingerprint = describer_fingerprint(spec, seed=0)
    cache = str(tmp_path / "wardrobe.parquet")

    first = OutfitDescriber(DescriberConfig(spec, 0, fingerprint))
    wardrobe = cached_wardrobe(groups, cache, fingerprint, in_process(first))
    assert first.calls == 3 * (2 + 1)  # 2 VLM answers and 1 LLM summary per outfit
    assert set(wardrobe.outfits) == {g.outfit for g in groups}
    assert all(len(o.answers) == 2 and o.describer == fingerprint for o in wardrobe.outfits.values())

    again = OutfitDescriber(DescriberConfig(spec, 0, fingerprint))
    assert cached_wardrobe(groups, cache, fingerprint, in_process(again)) == wardrobe
    assert again.calls == 0 and again.vlm is None  # not even loaded

    more = outfit_groups(prcc["train"], prcc.root)[:4]
    third = OutfitDescriber(DescriberConfig(spec, 0, fingerprint))
    cached_wardrobe(more, cache, fingerprint, in_process(third))
    assert third.calls == 3  # only the new outfit
    other = describer_fingerprint(spec.model_copy(update={"question": "What is she wearing?"}), seed=0)
    assert other != fingerprint


# ---- targets -----------------------------------------------------------------------------


def test_targets_are_other_identities_outfits_drawn_with_a_seed(prcc):
    wardrobe = world_wardrobe(prcc.root, outfit_groups(prcc["train"], prcc.root))
    sampler = TargetSampler(wardrobe, run_seed=0)
    targets = sampler.targets("prcc/rgb/train/001/A_cropped_rgb001.jpg", 1, "1_AB", 10)
    assert len(targets) == 10 and all(t.identity != 1 for t in targets)
    assert len({t.outfit for t in targets}) == 8  # all 8 other outfits before any repeats
    assert targets == sampler.targets("prcc/rgb/train/001/A_cropped_rgb001.jpg", 1, "1_AB", 10)
    assert targets != TargetSampler(wardrobe, run_seed=1).targets(
        "prcc/rgb/train/001/A_cropped_rgb001.jpg", 1, "1_AB", 10
    )
    alone = Wardrobe({k: v for k, v in wardrobe.outfits.items() if v.identity == 1})
    with pytest.raises(FactoryError, match="no outfit of another identity to dress identity 1 in"):
        TargetSampler(alone, 0).targets("x", 1, "1_AB", 2)


# ---- specs -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["inpaint-demo.yaml", "dlcr-prcc.yaml"])
def test_example_specs_are_valid(name):
    spec = load_spec(ROOT / "jobs" / "specs" / name, InpaintSpec)
    assert spec.sampler.scheduler == "ddim" and spec.sampler.guidance == 7.5 and spec.masks.dilation == 0


def test_dlcr_defaults_and_bad_specs_in_one_line(tmp_path):
    spec = InpaintSpec.model_validate(
        {"run_id": "r", "output": "o", "model": {"preset": "tiny"}, "source": {"dataset": WORLD}}
    )
    s = spec.sampler
    assert (s.height, s.width, s.steps, s.guidance, s.strength, s.eta, s.batch_size) == (768, 256, 50, 7.5, 1.0, 0.0, 5)
    assert spec.variants == 10 and spec.masks.source == "world" and spec.masks.clothes_labels is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_id: r\noutput: o\nmodel: {preset: tiny}\nsource: {dataset: x}\nmasks: {source: folder}\n")
    with pytest.raises(FactoryError, match=r"^.*bad.yaml:5: masks: Value error, masks.source 'folder' needs path$"):
        load_spec(bad, InpaintSpec)
