"""The identity model: who a synthetic person is and what they wear.

A `Person` is a pure function of `(seed, identity)` (`make_person`): body shape, skin,
hair, accessories and two or more `Outfit`s. What stays with the person across outfits
(height, build, skin, hair, hat, bag, glasses) is what a clothes-changing or
cross-modality model has to learn; what changes between outfits (garment kind, colour,
material, pattern) is what it has to ignore. The renderer (`factory.world.render`)
turns a person, an outfit index and a camera into an image and a LIP parsing mask.

Colours are RGB tuples taken from `PALETTE`, a small named palette, so that
`Outfit.description()` can name them in the DLCR release format.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# LIP (Look Into Person) parsing label ids, as human parsers output them.
LIP = {
    "background": 0,
    "hat": 1,
    "hair": 2,
    "glove": 3,
    "sunglasses": 4,
    "upper-clothes": 5,
    "dress": 6,
    "coat": 7,
    "socks": 8,
    "pants": 9,
    "jumpsuits": 10,
    "scarf": 11,
    "skirt": 12,
    "face": 13,
    "left-arm": 14,
    "right-arm": 15,
    "left-leg": 16,
    "right-leg": 17,
    "left-shoe": 18,
    "right-shoe": 19,
}

# Small named palette; every garment colour a person gets is one of these, lightly
# jittered but always nearest to its own name.
PALETTE: dict[str, tuple[int, int, int]] = {
    "Black": (28, 28, 32),
    "White": (232, 232, 226),
    "Gray": (128, 128, 130),
    "Red": (190, 30, 35),
    "Maroon": (110, 25, 40),
    "Orange": (230, 120, 30),
    "Yellow": (235, 205, 50),
    "Beige": (215, 195, 160),
    "Brown": (110, 70, 40),
    "Khaki": (165, 150, 100),
    "Green": (40, 140, 60),
    "Olive": (95, 100, 40),
    "Teal": (20, 125, 130),
    "Blue": (45, 95, 200),
    "Navy": (30, 40, 90),
    "Purple": (110, 50, 140),
    "Pink": (235, 130, 170),
}

TOPS = ("t-shirt", "shirt", "sweater", "jacket", "coat", "dress")
BOTTOMS = ("pants", "shorts", "skirt")
MATERIALS = ("cotton", "denim", "leather", "wool", "synthetic")
PATTERNS = ("plain", "stripes", "checks", "dots")
HAIR_STYLES = ("short", "buzz", "long", "ponytail", "bun", "curly")

# LIP label of each top garment (t-shirts, shirts and sweaters are upper-clothes).
TOP_LABEL = {"t-shirt": 5, "shirt": 5, "sweater": 5, "jacket": 7, "coat": 7, "dress": 6}

_PATTERN_WORD = {"plain": "", "stripes": "striped", "checks": "checked", "dots": "polka-dot"}

_TOP_WEIGHTS = {"t-shirt": 0.28, "shirt": 0.17, "sweater": 0.15, "jacket": 0.15, "coat": 0.11, "dress": 0.14}
_TOP_MATERIALS = {
    "t-shirt": ("cotton", "synthetic"),
    "shirt": ("cotton", "denim", "synthetic"),
    "sweater": ("wool", "cotton", "synthetic"),
    "jacket": ("leather", "denim", "synthetic", "wool"),
    "coat": ("wool", "leather", "synthetic"),
    "dress": ("cotton", "synthetic", "wool"),
}
_BOTTOM_MATERIALS = {
    "pants": ("denim", "cotton", "wool", "synthetic", "leather"),
    "shorts": ("cotton", "denim", "synthetic"),
    "skirt": ("cotton", "wool", "leather", "synthetic", "denim"),
}
_BOTTOM_COLOURS = ("Black", "Navy", "Blue", "Gray", "Khaki", "Brown", "Beige", "White", "Olive", "Maroon", "Red")
_DENIM_COLOURS = ("Blue", "Navy", "Black", "Gray")
_SHOE_COLOURS = ("Black", "White", "Brown", "Gray", "Red", "Blue", "Navy", "Beige")
SKIN_TONES = ((250, 215, 190), (235, 190, 160), (215, 165, 125), (185, 135, 95), (145, 100, 70), (105, 70, 50))
HAIR_COLOURS = {
    "black": (22, 20, 20),
    "dark brown": (55, 36, 26),
    "brown": (105, 68, 42),
    "blonde": (205, 175, 110),
    "red": (150, 62, 30),
    "gray": (150, 150, 148),
}
_HAIR_COLOUR_WEIGHTS = (0.35, 0.25, 0.15, 0.12, 0.05, 0.08)
_ACCESSORY_COLOURS = ("Black", "Gray", "Navy", "Red", "Brown", "Beige", "Green", "Blue", "White", "Orange")


def colour_name(rgb: tuple[int, int, int]) -> str:
    """The `PALETTE` name nearest to `rgb`."""
    r, g, b = (int(c) for c in rgb)
    return min(PALETTE, key=lambda n: (PALETTE[n][0] - r) ** 2 + (PALETTE[n][1] - g) ** 2 + (PALETTE[n][2] - b) ** 2)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class Outfit:
    """One set of clothes. `top_material` and `bottom_material` set IR brightness."""

    top: str
    top_color: tuple[int, int, int]
    top_material: str
    top_pattern: str
    bottom: str | None  # None when top is "dress"
    bottom_color: tuple[int, int, int]
    bottom_material: str
    shoes_color: tuple[int, int, int]
    pattern_color: tuple[int, int, int] = (232, 232, 226)  # second colour of stripes/checks/dots

    def description(self) -> str:
        """DLCR release format: "Gray striped cotton t-shirt| Blue denim pants| Black shoes".

        Three `"| "`-separated parts (top, bottom, shoes); two (top, shoes) for a dress.
        """
        words = [colour_name(self.top_color), _PATTERN_WORD.get(self.top_pattern, ""), self.top_material, self.top]
        parts = [_cap(" ".join(w for w in words if w))]
        if self.bottom:
            parts.append(_cap(f"{colour_name(self.bottom_color)} {self.bottom_material} {self.bottom}"))
        parts.append(f"{colour_name(self.shoes_color)} shoes")
        return "| ".join(parts)


@dataclass(frozen=True)
class Person:
    """One identity. Everything but `outfits` is the same in every image of it."""

    identity: int
    height: float  # metres, 1.50 .. 1.95
    build: float  # shoulder/hip width factor, about 0.85 .. 1.2
    skin_tone: tuple[int, int, int]
    hair_style: str  # one of HAIR_STYLES
    hair_color: tuple[int, int, int]
    hat: bool
    bag: bool
    glasses: bool
    outfits: tuple[Outfit, ...]  # two or more
    hat_style: str = "beanie"  # "beanie" | "cap"
    hat_color: tuple[int, int, int] = (28, 28, 32)
    bag_style: str = "backpack"  # "backpack" | "shoulder"
    bag_color: tuple[int, int, int] = (28, 28, 32)


def _seed_words(*values: int) -> list[int]:
    return [int(v) & 0xFFFFFFFFFFFFFFFF for v in values]


def _palette_colour(rng: np.random.Generator, names: tuple[str, ...] | list[str]) -> tuple[int, int, int]:
    name = names[int(rng.integers(len(names)))]
    base = np.array(PALETTE[name])
    jittered = tuple(int(c) for c in np.clip(base + rng.integers(-10, 11, size=3), 0, 255))
    return jittered if colour_name(jittered) == name else PALETTE[name]


def _choice(rng: np.random.Generator, options, weights=None):
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _luma(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _make_outfit(rng: np.random.Generator) -> Outfit:
    top = _choice(rng, list(_TOP_WEIGHTS), list(_TOP_WEIGHTS.values()))
    top_material = _choice(rng, _TOP_MATERIALS[top])
    if top_material in ("leather", "denim"):
        top_pattern = "plain"
    else:
        top_pattern = _choice(rng, PATTERNS, (0.45, 0.2, 0.18, 0.17))
    if top_material == "denim":
        top_color = _palette_colour(rng, _DENIM_COLOURS)
    elif top_material == "leather":
        top_color = _palette_colour(rng, ("Black", "Brown", "Maroon", "Navy", "Beige"))
    else:
        top_color = _palette_colour(rng, list(PALETTE))
    contrast = [n for n, c in PALETTE.items() if abs(_luma(c) - _luma(top_color)) > 70]
    pattern_color = _palette_colour(rng, contrast)
    if top == "dress":
        bottom, bottom_color, bottom_material = None, (0, 0, 0), ""
    else:
        bottom = _choice(rng, BOTTOMS, (0.68, 0.16, 0.16))
        bottom_material = _choice(rng, _BOTTOM_MATERIALS[bottom])
        names = _DENIM_COLOURS if bottom_material == "denim" else _BOTTOM_COLOURS
        bottom_color = _palette_colour(rng, [n for n in names if n != colour_name(top_color)] or names)
    shoes_color = _palette_colour(rng, _SHOE_COLOURS)
    return Outfit(top, top_color, top_material, top_pattern, bottom, bottom_color, bottom_material,
                  shoes_color, pattern_color)


def _clearly_different(a: Outfit, b: Outfit) -> bool:
    """Different top colour name, and a different material or pattern (so IR sees it too)."""
    return colour_name(a.top_color) != colour_name(b.top_color) and (
        a.top_material != b.top_material or a.top_pattern != b.top_pattern
    )


def make_person(identity: int, seed: int, outfits: int = 2) -> Person:
    """The person `identity` of the world `seed`; a pure function of `(seed, identity)`.

    Outfit k is the same whatever `outfits` is (asking for 3 gives the 2 of `outfits=2`
    plus one), and any two outfits of one person clearly differ: another top colour and
    another top material or pattern.
    """
    if outfits < 2:
        raise ValueError("a person has two or more outfits")
    body = np.random.default_rng(_seed_words(seed, identity, 0x5EED_B0D1))
    height = float(np.clip(body.normal(1.72, 0.09), 1.50, 1.95))
    build = float(np.clip(body.normal(1.0, 0.09), 0.84, 1.22))
    tone = np.array(SKIN_TONES[int(body.integers(len(SKIN_TONES)))]) + body.integers(-8, 9, size=3)
    skin_tone = tuple(int(c) for c in np.clip(tone, 0, 255))
    hair_style = _choice(body, HAIR_STYLES, (0.27, 0.12, 0.22, 0.14, 0.1, 0.15))
    hair_name = _choice(body, list(HAIR_COLOURS), _HAIR_COLOUR_WEIGHTS)
    hair_color = tuple(int(c) for c in np.clip(np.array(HAIR_COLOURS[hair_name]) + body.integers(-6, 7, 3), 0, 255))
    hat = bool(body.random() < 0.2)
    bag = bool(body.random() < 0.4)
    glasses = bool(body.random() < 0.22)
    hat_style = _choice(body, ("beanie", "cap"))
    hat_color = _palette_colour(body, _ACCESSORY_COLOURS)
    bag_style = _choice(body, ("backpack", "shoulder"), (0.6, 0.4))
    bag_color = _palette_colour(body, _ACCESSORY_COLOURS)

    chosen: list[Outfit] = []
    for k in range(outfits):
        wardrobe = np.random.default_rng(_seed_words(seed, identity, 0xC10_7E5, k))
        for _ in range(1000):
            candidate = _make_outfit(wardrobe)
            if all(_clearly_different(candidate, other) for other in chosen):
                break
        chosen.append(candidate)
    return Person(identity, height, build, skin_tone, hair_style, hair_color, hat, bag, glasses, tuple(chosen),
                  hat_style, hat_color, bag_style, bag_color)
