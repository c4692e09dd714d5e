"""The procedural pedestrian renderer: a person, an outfit and a camera → image + LIP mask.

How an image is made (all of it numpy and PIL, about a millisecond per 64×128 image):

1. **Label canvas.** The body is drawn part by part, in painter's order, with PIL
   ImageDraw into a uint8 canvas at twice the output resolution. Each part is filled
   with an internal region id: the LIP id of the part, or a few extra ids for things a
   human parser does not label (bag, bag strap → background) or labels like their
   surroundings (eyes and mouth → face). The view decides the parts and the order:
   front (face, both arms beside the torso), back (the head is all hair, a backpack
   covers the back) or side (narrower torso, a stride, the far arm and leg behind the
   near ones, a profile with a nose). Scale and crop jitter live here: the figure is
   placed at a random size and position, so image and mask move together.
2. **Mask.** Region ids → LIP ids, sampled at pixel centres (nearest, no smoothing).
3. **Colour.** RGB cameras look region colours up in a table, add fabric patterns
   (stripes, checks, dots) and material textures (denim twill, wool knit, leather sheen),
   cylinder shading and a side light. IR cameras look up a brightness instead, from
   *material*, never colour: skin bright, cotton light, wool mid, denim and synthetics
   darker, leather dark, hair dark, glasses black; patterns stay as texture contrast.
4. **Compose.** The 2× figure is area-averaged to the output size and laid over a
   background drawn once per scene (a corridor, a street or a park, each with its own
   shapes, colours and lighting; IR backgrounds are dark and flat), shifted and
   relit per image. Then sensor noise (and, in IR, a slight blur).

Every random choice comes from one `numpy.random.Generator` seeded from the `seed`
argument (mixed with the identity, outfit and camera so that reusing seeds across
identities does not correlate their poses), so the same call gives the same bytes.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from factory.world.people import TOP_LABEL, Person

VIEWS = ("front", "back", "side")
SUPERSAMPLE = 2

# Internal region ids beyond the LIP ones (0..19).
_BAG, _STRAP, _FACE_DARK = 20, 21, 22
_N_REGIONS = 32
_TO_LIP = np.arange(_N_REGIONS, dtype=np.uint8)
_TO_LIP[[_BAG, _STRAP]] = 0
_TO_LIP[_FACE_DARK] = 13
_TO_LIP[23:] = 0
# Mirroring a side view swaps the person's left and right.
_SWAP_LR = np.arange(_N_REGIONS, dtype=np.uint8)
for _a, _b in ((14, 15), (16, 17), (18, 19)):
    _SWAP_LR[_a], _SWAP_LR[_b] = _b, _a

_SKIN_IDS = (13, 14, 15, 16, 17, _FACE_DARK)

# IR (thermal-like) brightness, 0..1: material decides, colour never does.
IR_MATERIAL = {"cotton": 0.66, "wool": 0.54, "denim": 0.45, "synthetic": 0.37, "leather": 0.22}
IR_SKIN = 0.92
IR_HAIR = 0.34
IR_GLASSES = 0.07
IR_SHOES = 0.3
IR_PATTERN_FACTOR = 0.68  # pattern pixels are this much of the fabric's brightness
_HAT_MATERIAL = {"beanie": "wool", "cap": "synthetic"}
_BAG_MATERIAL = {"backpack": "synthetic", "shoulder": "leather"}


@dataclass(frozen=True)
class Camera:
    """A camera of the world: its modality, the viewpoint it mostly sees, its scene."""

    name: str  # e.g. "cam3"
    modality: str  # "rgb" | "ir"
    view: str  # "front" | "back" | "side" | "any": the preferred viewpoint
    scene: int  # background family; lighting, scale and noise derive from it


@dataclass(frozen=True)
class Rendered:
    image: Image.Image  # mode "RGB"; IR images are grey with R == G == B
    mask: np.ndarray  # uint8 H×W LIP ids, aligned with the image pixels (bag → 0)
    view: str  # "front" | "back" | "side"


# SYSU-MM01-like rig: four RGB cameras (cam1, cam2, cam4, cam5) and two IR (cam3, cam6).
SYSU_LIKE_CAMERAS = (
    Camera("cam1", "rgb", "front", 0),
    Camera("cam2", "rgb", "side", 1),
    Camera("cam3", "ir", "any", 4),
    Camera("cam4", "rgb", "back", 2),
    Camera("cam5", "rgb", "any", 3),
    Camera("cam6", "ir", "side", 5),
)


# --------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class _Scene:
    kind: str
    gains: np.ndarray  # RGB light colour × brightness
    fill: float  # mean figure height / image height
    noise_rgb: float
    noise_ir: float
    ir_ambient: float


@functools.lru_cache(maxsize=256)
def _scene(scene: int) -> _Scene:
    rng = np.random.default_rng([scene & 0xFFFFFFFF, 0x5CE7E])
    kind = ("indoor", "street", "park")[scene % 3]
    cast = {"indoor": (1.08, 1.0, 0.86), "street": (0.94, 1.0, 1.07), "park": (1.0, 1.03, 0.92)}[kind]
    gains = np.array(cast) * rng.uniform(0.92, 1.08, 3) * rng.uniform(0.78, 1.1)
    return _Scene(kind, gains.astype(np.float32), float(rng.uniform(0.8, 0.9)), float(rng.uniform(2.0, 5.0)),
                  float(rng.uniform(5.0, 8.0)), float(rng.uniform(0.08, 0.15)))


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


@functools.lru_cache(maxsize=64)
def _background(scene: int, modality: str, width: int, height: int) -> np.ndarray:
    """The scene's background, wider than the image (per-image crops shift it): float32."""
    info = _scene(scene)
    rng = np.random.default_rng([scene & 0xFFFFFFFF, 0xBAC6])
    bw = width + width // 2
    img = Image.new("RGB", (bw, height))
    d = ImageDraw.Draw(img)
    horizon = int(height * rng.uniform(0.58, 0.72))

    def jit(c, a=18):
        return tuple(int(v) for v in np.clip(np.array(c) + rng.integers(-a, a + 1, 3), 0, 255))

    def vgrad(y0, y1, top, bottom):
        for y in range(y0, y1):
            t = (y - y0) / max(1, y1 - y0 - 1)
            d.line([(0, y), (bw, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))

    if info.kind == "indoor":
        wall = jit(_pick(rng, [(200, 190, 170), (175, 180, 185), (190, 200, 210), (210, 200, 185)]))
        floor = jit(_pick(rng, [(120, 95, 70), (150, 150, 145), (95, 90, 90), (170, 160, 140)]))
        vgrad(0, horizon, tuple(min(255, c + 20) for c in wall), wall)
        vgrad(horizon, height, floor, tuple(int(c * 0.75) for c in floor))
        for _ in range(int(rng.integers(1, 4))):  # doors
            x = int(rng.integers(0, bw - 10))
            w = int(rng.integers(width // 5, width // 3))
            d.rectangle([x, int(horizon * rng.uniform(0.15, 0.3)), x + w, horizon], fill=jit((90, 70, 55), 30))
        d.rectangle([0, 0, bw, max(1, height // 40)], fill=(245, 245, 235))  # ceiling light
        d.line([(0, horizon), (bw, horizon)], fill=tuple(int(c * 0.5) for c in floor), width=2)
        for k in range(1, 5):  # floor tiles
            y = horizon + (height - horizon) * k * k // 25
            d.line([(0, y), (bw, y)], fill=tuple(int(c * 0.85) for c in floor))
    elif info.kind == "street":
        facade = jit(_pick(rng, [(150, 80, 60), (140, 140, 140), (185, 170, 140), (110, 100, 95)]))
        ground = jit(_pick(rng, [(125, 125, 128), (100, 100, 105), (150, 145, 135)]))
        vgrad(0, horizon, facade, tuple(int(c * 0.85) for c in facade))
        vgrad(horizon, height, ground, tuple(int(c * 0.8) for c in ground))
        win = jit((60, 70, 90), 25)
        step_x, step_y = max(6, width // 4), max(8, height // 7)
        ox, oy = int(rng.integers(0, step_x)), int(rng.integers(2, step_y))
        for y in range(oy, horizon - step_y // 2, step_y):
            for x in range(ox - step_x, bw, step_x):
                d.rectangle([x, y, x + step_x // 2, y + step_y // 2], fill=win)
        d.rectangle([0, horizon - 1, bw, horizon + 2], fill=(70, 70, 72))  # curb
        px = int(rng.integers(0, bw))
        d.rectangle([px, 0, px + max(2, width // 20), horizon + 2], fill=jit((50, 55, 50), 10))  # pole
    else:  # park
        sky = jit((150, 190, 225), 20)
        vgrad(0, horizon, sky, tuple(min(255, c + 25) for c in sky))
        grass = jit((80, 130, 60), 20)
        vgrad(horizon, height, grass, tuple(int(c * 0.8) for c in grass))
        for _ in range(int(rng.integers(3, 7))):  # trees and bushes
            x, r = int(rng.integers(-10, bw)), int(rng.integers(width // 6, width // 2))
            y = int(horizon - rng.uniform(0.1, 0.5) * r)
            d.ellipse([x - r, y - r, x + r, y + r // 2], fill=jit((45, 95, 40), 20))
        path = jit((185, 170, 140), 15)
        top = horizon + (height - horizon) // 4
        d.polygon([(bw * 0.35, top), (bw * 0.6, top), (bw * 0.8, height), (bw * 0.1, height)], fill=path)

    arr = np.asarray(img, dtype=np.float32)
    low = rng.normal(0, 1, (height // 10 + 2, bw // 10 + 2)).astype(np.float32)  # blotchy texture
    low = np.asarray(Image.fromarray(low, "F").resize((bw, height), Image.BICUBIC))
    arr = arr + 7 * low[..., None] + rng.normal(0, 3, arr.shape).astype(np.float32)
    if modality == "ir":  # dark, flat, a little structure left
        lum = arr @ np.array([0.299, 0.587, 0.114], np.float32) / 255
        ramp = np.linspace(0.03, -0.02, height, dtype=np.float32)[:, None]
        return ((info.ir_ambient + 0.12 * (lum - lum.mean()) + ramp) * 255).astype(np.float32)
    return arr * info.gains


# ------------------------------------------------------------------------- drawing


class _Canvas:
    """Draws in figure units: u across (0 = body axis), v down (0 = top of head, 1 = soles)."""

    def __init__(self, size: tuple[int, int], cx: float, top: float, hf: float):
        self.img = Image.new("L", size, 0)
        self.draw = ImageDraw.Draw(self.img)
        self.cx, self.top, self.hf = cx, top, hf

    def xy(self, u: float, v: float) -> tuple[float, float]:
        return (self.cx + u * self.hf, self.top + v * self.hf)

    def poly(self, lab: int, pts) -> None:
        self.draw.polygon([self.xy(u, v) for u, v in pts], fill=lab)

    def box(self, u: float, v: float, ru: float, rv: float) -> list[tuple[float, float]]:
        return [self.xy(u - ru, v - rv), self.xy(u + ru, v + rv)]

    def ellipse(self, lab: int, u: float, v: float, ru: float, rv: float) -> None:
        self.draw.ellipse(self.box(u, v, ru, rv), fill=lab)

    def chord(self, lab: int, u: float, v: float, ru: float, rv: float, a0: float, a1: float) -> None:
        self.draw.chord(self.box(u, v, ru, rv), a0, a1, fill=lab)

    def rect(self, lab: int, u0: float, v0: float, u1: float, v1: float) -> None:
        self.draw.rectangle([self.xy(u0, v0), self.xy(u1, v1)], fill=lab)

    def line(self, lab: int, pts, width: float) -> None:
        self.draw.line([self.xy(u, v) for u, v in pts], fill=lab, width=max(1, int(round(width * self.hf))))

    def limb(self, lab: int, pts, widths, t0: float = 0.0, t1: float | None = None) -> None:
        """A tapered limb along the polyline `pts` (half-widths `widths`), from parameter t0 to t1."""
        p = np.asarray(pts, dtype=float)
        w = np.asarray(widths, dtype=float)
        t1 = len(p) - 1 if t1 is None else t1
        for i in range(len(p) - 1):
            s0, s1 = max(t0, i), min(t1, i + 1)
            if s1 <= s0:
                continue
            a = p[i] + (s0 - i) * (p[i + 1] - p[i])
            b = p[i] + (s1 - i) * (p[i + 1] - p[i])
            wa = w[i] + (s0 - i) * (w[i + 1] - w[i])
            wb = w[i] + (s1 - i) * (w[i + 1] - w[i])
            dv = b - a
            n = np.array([-dv[1], dv[0]]) / max(1e-9, float(np.hypot(*dv)))
            self.poly(lab, [tuple(a + n * wa), tuple(b + n * wb), tuple(b - n * wb), tuple(a - n * wa)])
            if s1 < t1 and s1 == i + 1:  # round joint
                self.ellipse(lab, b[0], b[1], wb, wb)


def _hair_front(c: _Canvas, person: Person, hu: float, hv: float, rx: float, ry: float, back: bool) -> None:
    """Head hair seen from the front (drawn around the face) or the back (covers the head)."""
    hair, style = 2, person.hair_style
    volume = {"curly": 0.018, "long": 0.008, "buzz": 0.002}.get(style, 0.006)
    if back:
        c.ellipse(hair, hu, hv - volume / 2, rx + volume, ry + volume)
        if style == "bun":
            c.ellipse(hair, hu, hv - 0.55 * ry, 0.024, 0.022)
        if style == "curly":
            for k in (-1, 0, 1):
                c.ellipse(hair, hu + k * rx * 0.8, hv - ry * 0.75 + abs(k) * 0.02, 0.022, 0.02)
        return
    c.chord(hair, hu, hv - volume / 2, rx + volume, ry + volume, 160 if style != "buzz" else 185,
            380 if style != "buzz" else 355)
    if style == "bun":
        c.ellipse(hair, hu, hv - ry - 0.012, 0.022, 0.02)
    if style == "curly":
        for k in (-2, -1, 0, 1, 2):
            c.ellipse(hair, hu + k * rx * 0.55, hv - ry * 0.95 + abs(k) * 0.012, 0.02, 0.018)


def _face_front(c: _Canvas, person: Person, hu: float, hv: float, rx: float, ry: float) -> None:
    c.ellipse(13, hu, hv + 0.004, rx * 0.94, ry * 0.98)
    if not person.glasses:
        for s in (-1, 1):
            c.rect(_FACE_DARK, hu + s * 0.42 * rx - 0.008, hv + 0.004, hu + s * 0.42 * rx + 0.008, hv + 0.011)
    c.rect(_FACE_DARK, hu - 0.3 * rx, hv + 0.55 * ry, hu + 0.3 * rx, hv + 0.55 * ry + 0.006)
    fringe = {"buzz": (210, 330), "curly": (190, 350), "long": (195, 345)}.get(person.hair_style, (200, 340))
    c.chord(2, hu, hv, rx * 1.01, ry, *fringe)
    if person.glasses:
        for s in (-1, 1):
            c.ellipse(4, hu + s * 0.42 * rx, hv + 0.008, 0.38 * rx, 0.2 * ry)
        c.rect(4, hu - 0.1 * rx, hv + 0.002, hu + 0.1 * rx, hv + 0.008)


def _hat(c: _Canvas, person: Person, hu: float, hv: float, rx: float, ry: float, view: str) -> None:
    if not person.hat:
        return
    if person.hat_style == "beanie":
        c.chord(1, hu, hv - 0.006, rx + 0.01, ry + 0.012, 188, 352)
        return
    c.chord(1, hu, hv - 0.004, rx + 0.006, ry + 0.006, 192, 348)  # cap
    if view == "front":
        c.ellipse(1, hu, hv - 0.22 * ry, rx * 1.05, 0.014)
    elif view == "side":
        c.poly(1, [(hu + 0.2 * rx, hv - 0.3 * ry), (hu + rx + 0.035, hv - 0.2 * ry),
                   (hu + rx + 0.03, hv - 0.12 * ry), (hu + 0.2 * rx, hv - 0.16 * ry)])


@dataclass
class _Pose:
    view: str
    wf: float  # width factor
    arm_out: float  # front/back: arm angle outward (rad); side: swing (rad)
    elbow: float
    stance: float  # front/back: feet apart; side: stride angle (rad)


def _draw_person(c: _Canvas, person: Person, outfit_index: int, pose: _Pose) -> None:
    o = person.outfits[outfit_index]
    top_lab = TOP_LABEL[o.top]
    bottom_lab = 12 if o.bottom == "skirt" else 9
    view, wf = pose.view, pose.wf
    sw, chest, ww, hw = 0.118 * wf, 0.105 * wf, 0.088 * wf, 0.098 * wf
    hem = {"t-shirt": 0.52, "shirt": 0.535, "sweater": 0.53, "jacket": 0.545, "coat": 0.74, "dress": 0.72}[o.top]
    hem_w = {"coat": 1.17, "dress": 1.5}.get(o.top, 1.02) * hw
    sleeve = {"t-shirt": 0.55, "dress": 0.0}.get(o.top, 1.92)
    high_neck = o.top in ("sweater", "jacket", "coat")
    hv, ry = 0.063, 0.061
    if view == "side":
        _draw_side(c, person, o, pose, top_lab, bottom_lab, hem, sleeve, high_neck, hv, ry)
        return

    front = view == "front"
    left_img_arm, right_img_arm = (15, 14) if front else (14, 15)  # person's right is image-left from the front
    left_img_leg, right_img_leg = (17, 16) if front else (16, 17)
    left_img_shoe, right_img_shoe = (19, 18) if front else (18, 19)
    rx = 0.046

    if front and person.hair_style == "long":  # hair falling behind the shoulders
        c.rect(2, -rx - 0.012, hv, rx + 0.012, 0.24)
    # legs and shoes
    for s, leg, shoe in ((-1, left_img_leg, left_img_shoe), (1, right_img_leg, right_img_shoe)):
        hip = (s * 0.048 * wf, 0.5)
        ankle = (s * (0.045 * wf + pose.stance), 0.94)
        knee = ((hip[0] + ankle[0]) / 2 + s * 0.004, 0.725)
        pts, widths = [hip, knee, ankle], [0.045 * wf, 0.031 * wf, 0.022 * wf]
        c.limb(leg, pts, widths)
        c.ellipse(shoe, ankle[0] + s * 0.004, 0.972, 0.034, 0.028)
        if o.bottom == "pants":
            c.limb(bottom_lab, pts, [w + 0.008 for w in widths], 0, 1.97)
        elif o.bottom == "shorts":
            c.limb(bottom_lab, pts, [w + 0.01 for w in widths], 0, 0.55)
    if o.bottom in ("pants", "shorts"):
        c.poly(bottom_lab, [(-ww, 0.44), (ww, 0.44), (hw, 0.5), (hw * 0.85, 0.56), (-hw * 0.85, 0.56), (-hw, 0.5)])
    elif o.bottom == "skirt":
        c.poly(bottom_lab, [(-ww, 0.44), (ww, 0.44), (hw * 1.38, 0.68), (-hw * 1.38, 0.68)])
    if high_neck or not front:
        c.rect(13, -0.022, hv + 0.04, 0.022, 0.19)
    # torso
    c.poly(top_lab, [(-sw + 0.02, 0.165), (sw - 0.02, 0.165), (sw, 0.185), (chest, 0.27), (ww, 0.4), (hem_w, hem),
                     (-hem_w, hem), (-ww, 0.4), (-chest, 0.27), (-sw, 0.185)])
    if front and not high_neck:
        c.rect(13, -0.022, hv + 0.04, 0.022, 0.175)
        if o.top == "shirt":
            c.poly(13, [(-0.02, 0.17), (0.02, 0.17), (0, 0.21)])
        else:
            c.ellipse(13, 0, 0.17, 0.03, 0.018)
    # bag straps in front, backpack on the back
    if person.bag and front:
        if person.bag_style == "backpack":
            for s in (-1, 1):
                c.line(_STRAP, [(s * 0.6 * sw, 0.168), (s * 0.66 * sw, 0.36)], 0.016)
        else:
            c.line(_STRAP, [(0.75 * sw, 0.168), (-hw * 0.9, 0.46)], 0.012)
    if person.bag and not front and person.bag_style == "backpack":
        c.poly(_BAG, [(-0.72 * sw, 0.2), (0.72 * sw, 0.2), (0.76 * sw, 0.43), (-0.76 * sw, 0.43)])
        c.ellipse(_BAG, 0, 0.2, 0.72 * sw, 0.025)
        c.rect(_STRAP, -0.5 * sw, 0.34, 0.5 * sw, 0.35)
    # arms
    for s, arm in ((-1, left_img_arm), (1, right_img_arm)):
        shoulder = (s * (sw - 0.028 * wf), 0.19)
        a = pose.arm_out
        elbow = (shoulder[0] + s * 0.19 * np.sin(a), shoulder[1] + 0.19 * np.cos(a))
        b = a + pose.elbow
        wrist = (elbow[0] + s * 0.155 * np.sin(b), elbow[1] + 0.155 * np.cos(b))
        pts, widths = [shoulder, elbow, wrist], [0.029 * wf, 0.024 * wf, 0.019 * wf]
        c.limb(arm, pts, widths)
        c.ellipse(arm, wrist[0] + s * 0.003, wrist[1] + 0.03, 0.02, 0.032)
        if sleeve > 0:
            c.limb(top_lab, pts, [w + 0.006 for w in widths], 0, sleeve)
    if person.bag and person.bag_style == "shoulder":
        s = -1 if front else 1
        if not front:
            c.line(_STRAP, [(-0.75 * sw, 0.168), (hw * 0.9, 0.46)], 0.012)
        bu = s * (hw + 0.03)
        c.poly(_BAG, [(bu - 0.055, 0.44), (bu + 0.055, 0.44), (bu + 0.06, 0.56), (bu - 0.06, 0.56)])
    # head
    if front:
        _hair_front(c, person, 0, hv, rx, ry, back=False)
        _face_front(c, person, 0, hv, rx, ry)
        if person.hair_style == "long":
            for s in (-1, 1):
                c.poly(2, [(s * rx * 0.8, hv - 0.3 * ry), (s * (rx + 0.012), hv), (s * (rx + 0.016), 0.25),
                           (s * (rx - 0.01), 0.25), (s * rx * 0.85, hv + 0.4 * ry)])
    else:
        _hair_front(c, person, 0, hv, rx, ry, back=True)
        if person.hair_style == "long":
            c.poly(2, [(-rx - 0.008, hv), (rx + 0.008, hv), (rx + 0.018, 0.27), (-rx - 0.018, 0.27)])
        elif person.hair_style == "ponytail":
            c.poly(2, [(-0.016, hv + 0.02), (0.016, hv + 0.02), (0.01, 0.24), (-0.01, 0.24)])
            c.ellipse(2, 0, hv + 0.02, 0.02, 0.015)
    _hat(c, person, 0, hv, rx, ry, view)


def _draw_side(c, person, o, pose, top_lab, bottom_lab, hem, sleeve, high_neck, hv, ry) -> None:
    """Profile facing image-right: the viewer sees the person's right side (arm 15, leg 17)."""
    wf = pose.wf
    d = 0.068 * wf  # half body depth
    rx = 0.052
    hu = 0.012
    swing, stride = pose.arm_out, pose.stance

    def arm(lab, sgn):
        shoulder = (-0.006, 0.19)
        a = sgn * swing
        elbow = (shoulder[0] + 0.19 * np.sin(a), shoulder[1] + 0.19 * np.cos(a))
        b = a + pose.elbow * 2.5 + 0.1
        wrist = (elbow[0] + 0.155 * np.sin(b), elbow[1] + 0.155 * np.cos(b))
        pts, widths = [shoulder, elbow, wrist], [0.03 * wf, 0.024 * wf, 0.019 * wf]
        c.limb(lab, pts, widths)
        c.ellipse(lab, wrist[0] + 0.02 * np.sin(b), wrist[1] + 0.03 * np.cos(b), 0.022, 0.03)
        if sleeve > 0:
            c.limb(top_lab, pts, [w + 0.006 for w in widths], 0, sleeve)

    def leg(lab, shoe, sgn):
        hip = (0.0, 0.5)
        a = sgn * stride
        knee = (hip[0] + 0.225 * np.sin(a), hip[1] + 0.225 * np.cos(a))
        b = a - (0.12 if sgn < 0 else 0.0)
        ankle = (knee[0] + 0.215 * np.sin(b), min(0.945, knee[1] + 0.215 * np.cos(b)))
        pts, widths = [hip, knee, ankle], [0.05 * wf, 0.034 * wf, 0.024 * wf]
        c.limb(lab, pts, widths)
        foot_v = min(ankle[1] + 0.055, 1.0)
        c.poly(shoe, [(ankle[0] - 0.028, ankle[1] - 0.012), (ankle[0] + 0.022, ankle[1] - 0.006),
                      (ankle[0] + 0.07, foot_v - 0.02), (ankle[0] + 0.07, foot_v), (ankle[0] - 0.03, foot_v)])
        if o.bottom == "pants":
            c.limb(bottom_lab, pts, [w + 0.008 for w in widths], 0, 1.97)
        elif o.bottom == "shorts":
            c.limb(bottom_lab, pts, [w + 0.01 for w in widths], 0, 0.55)

    arm(14, -1)  # far (left) arm, behind the body
    leg(16, 18, -1)  # far leg
    leg(17, 19, 1)  # near leg
    if o.bottom in ("pants", "shorts"):
        c.poly(bottom_lab, [(-d, 0.44), (d * 0.9, 0.44), (d * 0.95, 0.52), (0.03, 0.57), (-d, 0.55)])
    elif o.bottom == "skirt":
        c.poly(bottom_lab, [(-d, 0.44), (d * 0.9, 0.44), (d * 1.5, 0.68), (-d * 1.55, 0.68)])
    if person.bag and person.bag_style == "backpack":
        c.poly(_BAG, [(-d - 0.085, 0.21), (-d + 0.01, 0.2), (-d + 0.01, 0.44), (-d - 0.09, 0.43)])
    c.rect(13, hu - 0.02, hv + 0.03, hu + 0.022, 0.19)  # neck
    hem_back = {"coat": 1.25, "dress": 1.7}.get(o.top, 1.05)
    c.poly(top_lab, [(-d * 0.85, 0.165), (d * 0.7, 0.165), (d * 1.05, 0.2), (d * 1.08, 0.28), (d * 0.92, 0.4),
                     (d * hem_back * 0.95, hem), (-d * hem_back, hem), (-d * 0.95, 0.4), (-d, 0.26)])
    if not high_neck:
        c.poly(13, [(hu - 0.005, 0.16), (hu + 0.026, 0.16), (hu + 0.022, 0.178)])
    if person.hair_style == "long":
        c.poly(2, [(hu - rx - 0.01, hv), (hu - 0.01, hv), (hu - 0.015, 0.25), (hu - rx - 0.02, 0.26)])
    elif person.hair_style == "ponytail":
        c.poly(2, [(hu - rx, hv - 0.01), (hu - rx + 0.02, hv + 0.01), (hu - rx - 0.02, 0.19), (hu - rx - 0.035, 0.18)])
    # head in profile
    c.ellipse(13, hu, hv, rx, ry)
    c.poly(13, [(hu + rx * 0.9, hv - 0.1 * ry), (hu + rx + 0.012, hv + 0.22 * ry), (hu + rx * 0.88, hv + 0.32 * ry)])
    vol = {"curly": 0.016, "long": 0.007, "buzz": 0.002}.get(person.hair_style, 0.005)
    start, end = {"buzz": (130, 335), "long": (100, 330), "curly": (95, 340)}.get(person.hair_style, (115, 335))
    c.chord(2, hu - vol / 2, hv - vol / 2, rx + vol, ry + vol, start, end)
    if person.hair_style == "bun":
        c.ellipse(2, hu - rx * 0.75, hv - ry * 0.7, 0.022, 0.02)
    if person.glasses:
        c.ellipse(4, hu + rx * 0.7, hv + 0.008, 0.3 * rx, 0.2 * ry)
        c.line(4, [(hu + rx * 0.5, hv + 0.004), (hu - rx * 0.1, hv + 0.002)], 0.006)
    else:
        c.rect(_FACE_DARK, hu + rx * 0.62, hv + 0.004, hu + rx * 0.8, hv + 0.011)
    c.rect(_FACE_DARK, hu + rx * 0.62, hv + 0.55 * ry, hu + rx * 0.92, hv + 0.55 * ry + 0.005)
    if person.bag and person.bag_style == "shoulder":
        c.line(_STRAP, [(-0.01, 0.168), (0.02, 0.46)], 0.012)
        c.poly(_BAG, [(-0.045, 0.44), (0.07, 0.44), (0.075, 0.56), (-0.05, 0.56)])
    if person.bag and person.bag_style == "backpack":
        c.line(_STRAP, [(-d * 0.6, 0.168), (d * 0.5, 0.35)], 0.014)
    arm(15, 1)  # near (right) arm
    _hat(c, person, hu, hv, rx, ry, "side")


# -------------------------------------------------------------------------- colour


@functools.lru_cache(maxsize=8)
def _grid(w2: int, h2: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.arange(w2, dtype=np.float32)[None, :], np.arange(h2, dtype=np.float32)[:, None])


def _patterns(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean pattern layer in figure units (so patterns scale with the person)."""
    if kind == "stripes":
        return (v / 0.046) % 1.0 < 0.45
    if kind == "checks":
        return ((np.floor(u / 0.055) + np.floor(v / 0.055)) % 2) == 0
    if kind == "dots":
        p = 0.045
        row = np.floor(v / p)
        du = ((u / p + 0.5 * (row % 2)) % 1.0) - 0.5
        dv = ((v / p) % 1.0) - 0.5
        return du * du + dv * dv < 0.29 ** 2
    return np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)


@functools.lru_cache(maxsize=8)
def _smooth_noise(h2: int, w2: int) -> np.ndarray:
    """A fixed field of soft unit-variance blotches, twice the canvas; images crop it at random."""
    small = np.random.default_rng(0x600D).normal(0, 1, (h2 // 5 + 2, w2 // 5 + 2)).astype(np.float32)
    field = np.asarray(Image.fromarray(small, "F").resize((2 * w2, 2 * h2), Image.BICUBIC), np.float32)
    return field / max(1e-6, float(field.std()))


def _material_texture(material: str, xs, ys, u, rng, shape) -> np.ndarray | float:
    """Multiplicative texture of a fabric (1 = none)."""
    if material == "denim":  # diagonal twill
        return np.where(((xs + ys) % 4) < 2, 1.05, 0.93)
    if material == "wool":  # knit ribs plus soft blotches
        h2, w2 = shape
        field = _smooth_noise(h2, w2)
        oy, ox = int(rng.integers(0, field.shape[0] - h2 + 1)), int(rng.integers(0, field.shape[1] - w2 + 1))
        return 1.0 + 0.07 * field[oy:oy + h2, ox:ox + w2] + np.where((xs % 3) == 0, -0.07, 0.02)
    if material == "leather":  # broad sheen
        return 0.82 + 0.4 * np.exp(-(((u - 0.03) / 0.05) ** 2))
    if material == "synthetic":
        return 0.95 + 0.18 * np.exp(-(((u + 0.03) / 0.04) ** 2))
    return 1.0


def _lut(person: Person, outfit_index: int, ir: bool) -> np.ndarray:
    o = person.outfits[outfit_index]
    if ir:
        lut = np.zeros(_N_REGIONS, np.float32)
        lut[list(_SKIN_IDS)] = IR_SKIN
        lut[_FACE_DARK] = IR_SKIN * 0.8
        lut[1] = IR_MATERIAL[_HAT_MATERIAL.get(person.hat_style, "wool")]
        lut[2] = IR_HAIR
        lut[4] = IR_GLASSES
        lut[[5, 6, 7]] = IR_MATERIAL[o.top_material]
        lut[[9, 12]] = IR_MATERIAL.get(o.bottom_material, 0.5)
        lut[[18, 19]] = IR_SHOES
        lut[_BAG] = IR_MATERIAL[_BAG_MATERIAL.get(person.bag_style, "synthetic")] * 0.9
        lut[_STRAP] = lut[_BAG] * 0.85
        return lut * 255
    lut = np.zeros((_N_REGIONS, 3), np.float32)
    skin = np.array(person.skin_tone, np.float32)
    lut[list(_SKIN_IDS)] = skin
    lut[_FACE_DARK] = skin * 0.45
    lut[1] = person.hat_color
    lut[2] = person.hair_color
    lut[4] = (18, 18, 22)
    lut[[5, 6, 7]] = o.top_color
    lut[[9, 12]] = o.bottom_color
    lut[[18, 19]] = o.shoes_color
    lut[_BAG] = person.bag_color
    lut[_STRAP] = np.array(person.bag_color, np.float32) * 0.7
    return lut


# -------------------------------------------------------------------------- render


def _choose_view(camera: Camera, rng: np.random.Generator) -> str:
    if camera.view in VIEWS:
        if rng.random() < 0.7:
            return camera.view
        return _pick(rng, [v for v in VIEWS if v != camera.view])
    return VIEWS[int(rng.choice(3, p=[0.4, 0.35, 0.25]))]


def _rng_for(person: Person, outfit: int, camera: Camera, seed: int) -> np.random.Generator:
    words = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(person.identity) & 0xFFFFFFFFFFFFFFFF, outfit,
             zlib.crc32(f"{camera.name}/{camera.modality}/{camera.scene}".encode())]
    return np.random.default_rng(words)


def render(person: Person, outfit: int, camera: Camera, *, seed: int, size: tuple[int, int] = (64, 128),
           view: str | None = None) -> Rendered:
    """Draw `person` in outfit `outfit` as `camera` sees it; `size` is (width, height).

    `view` forces "front", "back" or "side"; by default the camera's preferred view is
    taken 70% of the time (any view for "any" cameras). Same arguments, same bytes.
    """
    if not 0 <= outfit < len(person.outfits):
        raise ValueError(f"outfit {outfit} out of range: person {person.identity} has {len(person.outfits)}")
    if camera.modality not in ("rgb", "ir"):
        raise ValueError(f"camera modality must be 'rgb' or 'ir', not {camera.modality!r}")
    if camera.view not in VIEWS + ("any",):
        raise ValueError(f"camera view must be one of {VIEWS + ('any',)}, not {camera.view!r}")
    if view is not None and view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, not {view!r}")
    rng = _rng_for(person, outfit, camera, seed)
    ir = camera.modality == "ir"
    scene = _scene(camera.scene)
    w, h = size
    s = SUPERSAMPLE
    w2, h2 = w * s, h * s

    # geometry: view, pose, scale and crop jitter
    chosen = _choose_view(camera, rng)
    view = view or chosen
    mirror = view == "side" and rng.random() < 0.5
    fill = scene.fill * (person.height / 1.72) ** 0.5 * rng.uniform(0.93, 1.06)
    foot = rng.uniform(0.955, 1.025)
    fill = min(fill, foot - 0.01)
    hf = fill * h2
    top = foot * h2 - hf
    cx = w2 / 2 + rng.uniform(-0.07, 0.07) * w2
    wf = person.build * (1.72 / person.height) ** 0.5
    if view == "side":
        pose = _Pose(view, wf, rng.uniform(0.12, 0.42), rng.uniform(0.02, 0.1), rng.uniform(0.1, 0.3))
    else:
        pose = _Pose(view, wf, rng.uniform(0.04, 0.16), rng.uniform(-0.02, 0.06), rng.uniform(-0.004, 0.02))
    canvas = _Canvas((w2, h2), w2 - cx if mirror else cx, top, hf)
    _draw_person(canvas, person, outfit, pose)
    reg = np.asarray(canvas.img)
    if mirror:
        reg = _SWAP_LR[reg[:, ::-1]]
    mask = _TO_LIP[reg[s // 2::s, s // 2::s]]

    # colour, on the figure's bounding box only (rows and columns aligned to the supersampling)
    rows = np.flatnonzero(reg.any(axis=1))
    cols = np.flatnonzero(reg.any(axis=0))
    y0, y1 = rows[0] // s * s, -(-(rows[-1] + 1) // s) * s
    x0, x1 = cols[0] // s * s, -(-(cols[-1] + 1) // s) * s
    sub = reg[y0:y1, x0:x1]
    xs, ys = _grid(w2, h2)
    xs, ys = xs[:, x0:x1], ys[y0:y1]
    u = (xs - cx) / hf
    v = (ys - top) / hf
    o = person.outfits[outfit]
    on_top = sub == TOP_LABEL[o.top]
    fg = sub != 0
    lut = _lut(person, outfit, ir)
    texture = np.where(on_top, _material_texture(o.top_material, xs, ys, u, rng, sub.shape), np.float32(1.0))
    if o.bottom:
        on_bottom = (sub == 9) | (sub == 12)
        texture = np.where(on_bottom, _material_texture(o.bottom_material, xs, ys, u, rng, sub.shape), texture)
    texture = np.where(sub == 2, np.where((xs % 3) == 0, np.float32(0.88), np.float32(1.04)), texture)
    pattern = on_top & _patterns(o.top_pattern, u, v) if o.top_pattern != "plain" else None
    # cylinder shading around the body axis, a side light, a little top light (separable in u and v)
    light = rng.uniform(-1, 1)
    across = 1.0 - 0.3 * np.minimum(np.abs(u) / 0.16, 1.0) ** 2
    across = across * (1.0 + 0.12 * light * np.clip(u / 0.15, -1, 1))
    down = 1.06 - 0.1 * v
    if ir:
        across, down = 1.0 - 0.4 * (1.0 - across), 1.0 - 0.4 * (1.0 - down)  # heat is flatter than light
    texture = texture * across * down
    if o.top in ("shirt", "jacket", "coat") and view == "front":  # button placket / zip
        texture = np.where(on_top & (np.abs(u) < 0.006), texture * np.float32(0.75), texture)
    if pattern is not None and ir:
        texture = np.where(pattern, texture * np.float32(IR_PATTERN_FACTOR), texture)
    texture = texture.astype(np.float32, copy=False)

    def down2(a: np.ndarray) -> np.ndarray:
        """Mean over each s×s block, placed into the output frame."""
        acc = a[0::s, 0::s].astype(np.float32)
        for dy in range(s):
            for dx in range(s):
                if dy or dx:
                    acc = acc + a[dy::s, dx::s]
        out = np.zeros((h, w) + a.shape[2:], np.float32)
        out[y0 // s:y1 // s, x0 // s:x1 // s] = acc / (s * s)
        return out

    cov = down2(fg)
    ox = int(rng.integers(0, w // 2 + 1))
    if ir:
        fg_sum = down2(lut[sub] * texture)  # background regions have brightness 0
        bg = _background(camera.scene, "ir", w, h)[:, ox:ox + w]
        gain = rng.uniform(0.9, 1.08)
        img = (fg_sum * gain + rng.uniform(-6, 6) * cov) + bg * (1.0 - cov) * rng.uniform(0.85, 1.15)
        grey = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L")
        grey = grey.filter(ImageFilter.GaussianBlur(rng.uniform(0.45, 0.75)))
        noisy = np.asarray(grey, np.float32) + rng.standard_normal((h, w), np.float32) * scene.noise_ir
        out = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(np.repeat(out[..., None], 3, axis=2), "RGB")
        return Rendered(image, mask, view)

    col = lut[sub]  # background regions are black
    if pattern is not None:
        col[pattern] = o.pattern_color
    fg_sum = down2(col * texture[..., None])
    bg = _background(camera.scene, "rgb", w, h)[:, ox:ox + w]
    bright = rng.uniform(0.85, 1.12)
    cast = scene.gains * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    img = (fg_sum * cast + bg * (1.0 - cov[..., None])) * bright
    img = img + rng.standard_normal((h, w, 3), np.float32) * scene.noise_rgb
    return Rendered(Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB"), mask, view)
