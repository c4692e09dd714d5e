"""A procedural world of pedestrians: the ground truth behind the factory's benchmarks.

No real ReID dataset can be downloaded, so the world renders its own people with
numpy and PIL: `make_person(identity, seed)` gives an identity (body, skin, hair,
accessories, two or more outfits), and `render(person, outfit, camera, seed=...)` gives
an RGB or IR image with its LIP parsing mask. Everything is deterministic.

    python -m benchmarks.world
    python -m factory.world.contact_sheet --out sheet.png --identities 6
"""

from factory.world.people import LIP, PALETTE, Outfit, Person, colour_name, make_person
from factory.world.render import SYSU_LIKE_CAMERAS, Camera, Rendered, render

__all__ = [
    "LIP",
    "PALETTE",
    "SYSU_LIKE_CAMERAS",
    "Camera",
    "Outfit",
    "Person",
    "Rendered",
    "colour_name",
    "make_person",
    "render",
]
