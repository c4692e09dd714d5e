"""A world person as words: one word per attribute, in a fixed order.

The world base model learns to draw a person from this description, and DiVE's
identity tokens on that base start from it (one token per word), so the description
is built for a small text encoder rather than for a reader: every attribute has its
own position (`SLOTS`), every value is one word and one token, an absent item has its
own word (`nohat`, `nobag`, `none`), and a word the caption leaves open is `any`.

    petite slim fair black long nohat none noglasses red striped white cotton tshirt
    navy denim pants black nobag none

Colour words say nothing in infrared (the renderer's IR brightness follows material,
never colour), so `ir_words` opens them (`any`); what IR shows is height, build,
hair style, hat, glasses, pattern, materials, garment kinds and the bag.
"""

from __future__ import annotations

from factory.world import people
from factory.world.people import PALETTE, Outfit, Person, colour_name

SLOTS: tuple[str, ...] = (
    "height", "build", "skin", "hair_colour", "hair", "hat", "hat_colour", "glasses",
    "top_colour", "pattern", "pattern_colour", "top_material", "top",
    "bottom_colour", "bottom_material", "bottom", "shoes", "bag", "bag_colour",
)  # fmt: skip
WORDS_PER_PERSON = len(SLOTS)
ANY, NONE = "any", "none"
# Slots an outfit fills: what DLCR's clothing mask covers and an outfit prompt names.
CLOTHING_SLOTS = frozenset({"top_colour", "pattern", "pattern_colour", "top_material", "top", "bottom_colour",
                            "bottom_material", "bottom", "shoes"})
# Slots whose word changes nothing in an infrared image.
COLOUR_SLOTS = frozenset({"skin", "hair_colour", "hat_colour", "top_colour", "pattern_colour", "bottom_colour",
                          "shoes", "bag_colour"})

HEIGHTS = ("petite", "medium", "tall")  # below 1.66 m, up to 1.78 m, above
BUILDS = ("slim", "average", "broad")  # shoulder factor below 0.95, up to 1.05, above
SKINS = ("pale", "fair", "tan", "honey", "bronze", "dark")  # the world's six skin tones, light to dark
HAIR_WORDS = {"black": "black", "dark brown": "chestnut", "brown": "brown", "blonde": "blonde", "red": "ginger",
                "gray": "grey"}
PATTERNS = {"plain": "plain", "stripes": "striped", "checks": "checked", "dots": "dotted"}
TOPS = {"t-shirt": "tshirt", "shirt": "shirt", "sweater": "sweater", "jacket": "jacket", "coat": "coat",
        "dress": "dress"}
BAGS = {"backpack": "backpack", "shoulder": "handbag"}
COLOURS = tuple(name.lower() for name in PALETTE)

# Every word a description can hold: the world base model's tokenizer makes each one token.
VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys((
    ANY, NONE, *HEIGHTS, *BUILDS, *SKINS, *HAIR_WORDS.values(), "short", "buzz", "long", "ponytail", "bun",
    "curly", "nohat", "beanie", "cap", "glasses", "noglasses", *COLOURS, *PATTERNS.values(), "cotton", "denim",
    "leather", "wool", "synthetic", *TOPS.values(), "pants", "shorts", "skirt", "nobag", *BAGS.values(),
)))


def _bin(value: float, low: float, high: float, names: tuple[str, str, str]) -> str:
    return names[0] if value < low else names[2] if value > high else names[1]


def _nearest(rgb: tuple[int, int, int], options: dict) -> object:
    return min(options, key=lambda k: sum((a - b) ** 2 for a, b in zip(options[k], rgb)))


def _skin(person: Person) -> str:
    return SKINS[_nearest(person.skin_tone, dict(enumerate(people.SKIN_TONES)))]


def _hair_colour(person: Person) -> str:
    return HAIR_WORDS[_nearest(person.hair_color, people.HAIR_COLOURS)]


def _colour(rgb: tuple[int, int, int]) -> str:
    return colour_name(rgb).lower()


def describe_words(person: Person, outfit: int) -> list[str]:
    """The person in outfit `outfit` as `WORDS_PER_PERSON` words, one per slot of `SLOTS`."""
    o: Outfit = person.outfits[outfit]
    words = {
        "height": _bin(person.height, 1.66, 1.78, HEIGHTS),
        "build": _bin(person.build, 0.95, 1.05, BUILDS),
        "skin": _skin(person),
        "hair_colour": _hair_colour(person),
        "hair": person.hair_style,
        "hat": person.hat_style if person.hat else "nohat",
        "hat_colour": _colour(person.hat_color) if person.hat else NONE,
        "glasses": "glasses" if person.glasses else "noglasses",
        "top_colour": _colour(o.top_color),
        "pattern": PATTERNS[o.top_pattern],
        "pattern_colour": _colour(o.pattern_color) if o.top_pattern != "plain" else NONE,
        "top_material": o.top_material,
        "top": TOPS[o.top],
        "bottom_colour": _colour(o.bottom_color) if o.bottom else NONE,
        "bottom_material": o.bottom_material if o.bottom else NONE,
        "bottom": o.bottom or NONE,
        "shoes": _colour(o.shoes_color),
        "bag": BAGS[person.bag_style] if person.bag else "nobag",
        "bag_colour": _colour(person.bag_color) if person.bag else NONE,
    }
    return [words[slot] for slot in SLOTS]


def ir_words(words: list[str]) -> list[str]:
    """The same description with the colour slots opened (`any`): what an IR image can show."""
    return [ANY if slot in COLOUR_SLOTS else word for slot, word in zip(SLOTS, words)]


def outfit_words(words: list[str]) -> list[str]:
    """The same description with every slot that is not clothing opened (`any`): an outfit, on nobody."""
    return [word if slot in CLOTHING_SLOTS else ANY for slot, word in zip(SLOTS, words)]


def outfit_prompt(words: list[str]) -> str:
    """A prompt in the world models' language for an outfit: "a rgb photo of a {outfit_words} person"."""
    return f"a rgb photo of a {' '.join(outfit_words(words))} person"


def describe(person: Person, outfit: int) -> str:
    """`describe_words` joined with spaces: the text a prompt's `{identity}` becomes."""
    return " ".join(describe_words(person, outfit))
