"""The procedural pedestrian world: identities, renderer, LIP masks, IR, contact sheet."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from PIL import Image

from factory.world import LIP, SYSU_LIKE_CAMERAS, Camera, Outfit, contact_sheet, make_person, render
from factory.world.people import PALETTE, colour_name

RGB_CAM = Camera("cam1", "rgb", "front", 0)
IR_CAM = Camera("cam3", "ir", "any", 4)
SKIN = (13, 14, 15)
CLOTHES = (5, 6, 7, 9, 12)


def arrays(r):
    return np.asarray(r.image), r.mask


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("camera", [RGB_CAM, IR_CAM, Camera("cam6", "ir", "side", 5)], ids=lambda c: c.name)
def test_same_call_same_bytes_other_seed_other_image(camera):
    person = make_person(7, seed=11)
    a_img, a_mask = arrays(render(person, 1, camera, seed=123))
    b_img, b_mask = arrays(render(make_person(7, seed=11), 1, camera, seed=123))
    assert a_img.tobytes() == b_img.tobytes()
    assert np.array_equal(a_mask, b_mask)
    c_img, _ = arrays(render(person, 1, camera, seed=124))
    assert c_img.shape == a_img.shape
    assert np.abs(c_img.astype(int) - a_img.astype(int)).mean() > 1.0


def test_make_person_is_a_pure_function_of_seed_and_identity():
    first = make_person(42, seed=3)
    for i in range(30):  # making others in between changes nothing
        make_person(i, seed=3)
    assert make_person(42, seed=3) == first
    assert make_person(42, seed=4) != first
    people = [make_person(i, seed=3) for i in range(40)]
    for i, a in enumerate(people):
        for b in people[i + 1:]:
            assert (a.height, a.build, a.skin_tone, a.hair_style, a.hair_color) != (
                b.height, b.build, b.skin_tone, b.hair_style, b.hair_color)
            assert a.outfits != b.outfits
    # asking for more outfits keeps the first ones
    assert make_person(42, seed=3, outfits=3).outfits[:2] == first.outfits


def test_outfits_of_one_person_differ_clearly():
    for i in range(60):
        person = make_person(i, seed=0, outfits=3)
        assert len(person.outfits) == 3
        for j, a in enumerate(person.outfits):
            for b in person.outfits[j + 1:]:
                assert colour_name(a.top_color) != colour_name(b.top_color)
                assert (a.top_material, a.top_pattern) != (b.top_material, b.top_pattern)


def test_people_vary():
    people = [make_person(i, seed=0) for i in range(200)]
    assert len({p.hair_style for p in people}) >= 5
    assert 0.05 < np.mean([p.hat for p in people]) < 0.5
    assert 0.15 < np.mean([p.bag for p in people]) < 0.7
    assert 0.05 < np.mean([p.glasses for p in people]) < 0.5
    tops = {o.top for p in people for o in p.outfits}
    assert tops == {"t-shirt", "shirt", "sweater", "jacket", "coat", "dress"}
    assert {o.top_pattern for p in people for o in p.outfits} == {"plain", "stripes", "checks", "dots"}
    heights = [p.height for p in people]
    assert min(heights) >= 1.5 and max(heights) <= 1.95 and np.std(heights) > 0.04


# ---------------------------------------------------------------------- masks


@pytest.mark.parametrize("size", [(64, 128), (32, 64), (96, 192)])
def test_mask_shape_ids_and_content(size):
    lip_ids = set(LIP.values())
    for i in range(12):
        person = make_person(i, seed=5)
        for view in ("front", "back", "side"):
            r = render(person, i % 2, RGB_CAM, seed=i, size=size, view=view)
            assert r.view == view
            assert r.image.mode == "RGB" and r.image.size == size
            assert r.mask.shape == (size[1], size[0]) and r.mask.dtype == np.uint8
            present = set(np.unique(r.mask).tolist())
            assert present <= lip_ids
            assert present & {5, 6, 7}, "upper-body clothing"
            assert (r.mask == 0).mean() >= 0.3, "mostly background"
            if size[0] >= 64:  # small details need pixels
                if view == "front":
                    assert 13 in present
                if view == "back" or not person.hat:
                    assert 2 in present, (i, view, person.hair_style)
            if view == "back":
                assert not present & {4}, "no sunglasses seen from the back"


def test_mask_labels_follow_the_outfit():
    person = make_person(0, seed=0)
    for k, outfit in enumerate(person.outfits):
        r = render(person, k, RGB_CAM, seed=1, view="front")
        top = {"dress": 6, "coat": 7, "jacket": 7}.get(outfit.top, 5)
        assert (r.mask == top).sum() > 100
        assert not set(np.unique(r.mask).tolist()) & ({5, 6, 7} - {top})
    dress = Outfit("dress", PALETTE["Red"], "cotton", "plain", None, (0, 0, 0), "", PALETTE["Black"])
    skirt = Outfit("t-shirt", PALETTE["Red"], "cotton", "plain", "skirt", PALETTE["Blue"], "wool", PALETTE["Black"])
    for outfit, labels in ((dress, {6, 16, 17}), (skirt, {5, 12, 16, 17})):
        p = dataclasses.replace(person, outfits=(outfit, person.outfits[0]))
        present = set(np.unique(render(p, 0, RGB_CAM, seed=1, view="front").mask).tolist())
        assert labels <= present and 9 not in present


def test_left_and_right_follow_the_person():
    """From the front the person's left arm is on the image's right; from the back, on its left."""
    person = make_person(1, seed=0)
    cols = np.arange(64)
    for view, left_on_right in (("front", True), ("back", False)):
        mask = render(person, 0, RGB_CAM, seed=3, view=view).mask
        left_x = cols[np.nonzero(mask == 14)[1]].mean()
        right_x = cols[np.nonzero(mask == 15)[1]].mean()
        assert (left_x > right_x) == left_on_right


@pytest.mark.parametrize("view", ["front", "back", "side"])
def test_mask_is_aligned_with_image_pixels(view):
    """Changing only the top colour changes every pixel the mask calls top, and nothing farther
    than one (anti-aliased edge) pixel from it: a mask one pixel off fails this."""
    person = make_person(2, seed=0)
    base = dataclasses.replace(person.outfits[0], top_pattern="plain", top_color=PALETTE["Red"])
    other = dataclasses.replace(base, top_color=PALETTE["Green"])
    a = render(dataclasses.replace(person, outfits=(base, person.outfits[1])), 0, RGB_CAM, seed=9, view=view)
    b = render(dataclasses.replace(person, outfits=(other, person.outfits[1])), 0, RGB_CAM, seed=9, view=view)
    assert np.array_equal(a.mask, b.mask)
    changed = np.abs(np.asarray(a.image, int) - np.asarray(b.image, int)).sum(axis=2) > 12
    top = a.mask == {"dress": 6, "coat": 7, "jacket": 7}.get(base.top, 5)
    assert top.sum() > 100
    near_top = top.copy()
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)):
        near_top |= np.roll(top, (dy, dx), axis=(0, 1))
    assert changed[top].all()
    assert not (changed & ~near_top).any()


def test_bag_is_background_in_the_mask():
    person = dataclasses.replace(make_person(4, seed=0), bag=True, bag_style="backpack", bag_color=PALETTE["Red"])
    without = dataclasses.replace(person, bag=False)
    with_bag = render(person, 0, RGB_CAM, seed=2, view="back")
    no_bag = render(without, 0, RGB_CAM, seed=2, view="back")
    assert (with_bag.mask == 0).sum() > (no_bag.mask == 0).sum() + 50  # the backpack hides the back


# ------------------------------------------------------------------------- IR


def test_ir_is_grey_with_bright_skin():
    for i in range(8):
        person = make_person(i, seed=1)
        for view in ("front", "side"):
            r = render(person, i % 2, IR_CAM, seed=i, view=view)
            img = np.asarray(r.image)
            assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
            grey = img[..., 0].astype(float)
            skin = np.isin(r.mask, SKIN)
            clothes = np.isin(r.mask, CLOTHES)
            assert grey[skin].mean() > grey[clothes].mean() + 20
            assert grey[r.mask == 0].mean() < grey[skin].mean() - 80, "dark background"


def _outfit(colour: str, material: str, pattern: str = "plain") -> Outfit:
    return Outfit("sweater", PALETTE[colour], material, pattern, "pants", PALETTE["Black"], "denim", PALETTE["Black"])


def _clothing_brightness(outfit: Outfit, camera: Camera, seed: int = 4) -> float:
    person = make_person(6, seed=0)
    person = dataclasses.replace(person, outfits=(outfit, person.outfits[1]))
    r = render(person, 0, camera, seed=seed, view="front")
    return float(np.asarray(r.image)[..., 0][r.mask == 5].mean())


def test_ir_brightness_follows_material_not_colour():
    for material in ("cotton", "wool", "leather"):
        for pattern in ("plain", "stripes"):
            white = _clothing_brightness(_outfit("White", material, pattern), IR_CAM)
            navy = _clothing_brightness(_outfit("Navy", material, pattern), IR_CAM)
            assert abs(white - navy) < 2.0, (material, pattern, white, navy)
    # ...while in RGB the colour is the first thing you see
    assert _clothing_brightness(_outfit("White", "cotton"), RGB_CAM) > _clothing_brightness(
        _outfit("Navy", "cotton"), RGB_CAM) + 80
    by_material = {m: _clothing_brightness(_outfit("Red", m), IR_CAM) for m in ("cotton", "wool", "leather")}
    assert by_material["cotton"] > by_material["wool"] + 15 > by_material["leather"] + 30


def test_ir_keeps_patterns_as_texture():
    def row_profile_std(pattern):
        person = dataclasses.replace(make_person(6, seed=0), outfits=(_outfit("Red", "cotton", pattern),) * 2)
        r = render(person, 0, IR_CAM, seed=4, view="front")
        grey = np.asarray(r.image)[..., 0].astype(float)
        top = r.mask == 5
        rows = [grey[y][top[y]].mean() for y in range(grey.shape[0]) if top[y].sum() >= 8]
        return float(np.std(rows))

    assert row_profile_std("stripes") > 2 * row_profile_std("plain")


# ---------------------------------------------------------------- descriptions


def test_description_format():
    pattern = re.compile(
        r"^[A-Z][a-z]+( [a-z-]+)* [a-z-]+"  # top: colour [pattern] material kind
        r"\| ([A-Z][a-z]+ [a-z]+ (pants|shorts|skirt)\| )?"  # bottom (absent under a dress)
        r"[A-Z][a-z]+ shoes$"
    )
    seen_dress = seen_three = False
    for i in range(60):
        for outfit in make_person(i, seed=0).outfits:
            text = outfit.description()
            assert pattern.match(text), text
            parts = text.split("| ")
            if outfit.top == "dress":
                assert len(parts) == 2 and parts[0].endswith(" dress")
                seen_dress = True
            else:
                assert len(parts) == 3 and parts[1].endswith(outfit.bottom)
                seen_three = True
            assert parts[0].split()[0] == colour_name(outfit.top_color)
            assert outfit.top_material in parts[0]
    assert seen_dress and seen_three
    outfit = Outfit("t-shirt", PALETTE["Gray"], "cotton", "stripes", "pants", PALETTE["Blue"], "denim",
                    PALETTE["Black"])
    assert outfit.description() == "Gray striped cotton t-shirt| Blue denim pants| Black shoes"


# ---------------------------------------------------------------- cameras, sheet


def test_cameras_see_their_preferred_view_most():
    person = make_person(0, seed=0)
    for cam in SYSU_LIKE_CAMERAS:
        views = [render(person, 0, cam, seed=s).view for s in range(60)]
        if cam.view == "any":
            assert len(set(views)) == 3
        else:
            assert views.count(cam.view) > 30


def test_bad_arguments_are_refused():
    person = make_person(0, seed=0)
    with pytest.raises(ValueError):
        render(person, 2, RGB_CAM, seed=0)
    with pytest.raises(ValueError):
        render(person, 0, Camera("x", "thermal", "front", 0), seed=0)
    with pytest.raises(ValueError):
        render(person, 0, Camera("x", "rgb", "top", 0), seed=0)
    with pytest.raises(ValueError):
        make_person(0, seed=0, outfits=1)


def test_contact_sheet_writes_png(tmp_path):
    out = tmp_path / "sheet.png"
    assert contact_sheet.main(["--out", str(out), "--identities", "3", "--seed", "1"]) == 0
    with Image.open(out) as img:
        assert img.format == "PNG"
        layout = contact_sheet.Layout(3, 2, contact_sheet.sheet_cameras())
        assert img.size == layout.size
        assert layout.columns == 12  # 2 outfits × (4 RGB + 2 IR cameras)
        assert img.size == (40 + 12 * 68, 24 + 3 * (128 + 24 + 4))
