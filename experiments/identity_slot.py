"""Does a model draw someone else when the identity changes? Pixel distances, same seed.

    python -m experiments.identity_slot                                # the shipped world preset
    python -m experiments.identity_slot --model DIR --lora L --bank B --camera-codes C   # a fine-tune

For `--identities` identities and `--seeds` noise seeds, each image is generated on every
`--cameras` camera. An identity is a bank's vectors (`--bank`: its first identities), or
else a world person's attribute words (people of world `--world-seed`; `--vectors` draws
random vectors instead, the stand-in for an identity nobody fine-tuned). Printed: the
mean absolute pixel difference (0-255) between two *identities* at the same seed and
camera, against the same between two *seeds* at the same identity and camera. A model
that reads its identity changes the person when the identity changes (ratio near 1 or
above); one that ignores it leaves the image nearly as it is (ratio near 0), and no
identity token can then be learned by textual inversion. The last line is JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
import torch

from factory.models.bank import IdentityBank
from factory.models.pipeline import IDENTITY, TextToImage, random_identity_vector
from factory.models.presets import PRESETS
from factory.models.reference import ModelRef
from factory.world.captions import describe
from factory.world.people import make_person

PROMPT = "a {camera} photo of a {identity} person"


def identities(pipe: TextToImage, args: argparse.Namespace) -> list[tuple[str, np.ndarray | None]]:
    """(what the prompt's {identity} becomes, the vector its slot takes or None) per identity."""
    if args.bank:
        loaded = IdentityBank.load(args.bank)
        return [(IDENTITY, loaded.vector(i)) for i in loaded.identities[: args.identities]]
    if args.vectors:
        norm = pipe.typical_token_norm()
        return [(IDENTITY, random_identity_vector(i, pipe.embedding_dim, norm)) for i in range(args.identities)]
    return [(describe(make_person(i, args.world_seed), 0), None) for i in range(args.identities)]


def mean_distance(pairs) -> float:
    return float(np.mean([np.abs(a - b).mean() for a, b in pairs]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="world", help="a preset or a diffusers folder")
    parser.add_argument("--lora")
    parser.add_argument("--bank", help="take the bank's first identities (default: world people's words)")
    parser.add_argument("--vectors", action="store_true", help="random identity vectors instead of words")
    parser.add_argument("--world-seed", type=int, default=0, help="whose words (without --bank)")
    parser.add_argument("--camera-codes")
    parser.add_argument("--cameras", nargs="+", default=["cam1", "cam3"])
    parser.add_argument("--identities", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ref = ModelRef(**({"preset": args.model} if args.model in PRESETS else {"path": args.model}),
                   lora=args.lora, bank=args.bank, camera_codes=args.camera_codes)
    pipe = TextToImage.load(ref, device="cpu", dtype="float32")
    people = identities(pipe, args)
    images: dict[tuple[int, int, str], np.ndarray] = {}
    for camera in args.cameras:
        for i, (who, vector) in enumerate(people):
            prompt = PROMPT.format(camera=pipe.camera_code(camera), identity=who)
            drawn = pipe.generate([prompt] * args.seeds, [vector] * args.seeds, list(range(args.seeds)),
                                  scheduler="dpm++", steps=args.steps, guidance=args.guidance,
                                  width=args.width, height=args.height)
            for seed, image in enumerate(drawn):
                images[i, seed, camera] = np.asarray(image.convert("RGB"), dtype=np.float32)
    ids, seeds = range(len(people)), range(args.seeds)
    across_identities = mean_distance((images[a, s, c], images[b, s, c]) for a, b in itertools.combinations(ids, 2)
                                      for s in seeds for c in args.cameras)
    across_seeds = mean_distance((images[i, s, c], images[i, t, c]) for s, t in itertools.combinations(seeds, 2)
                                 for i in ids for c in args.cameras)
    result = {"model": args.model, "lora": args.lora, "bank": args.bank, "identities": len(people),
              "seeds": args.seeds, "cameras": args.cameras, "across_identities": round(across_identities, 2),
              "across_seeds": round(across_seeds, 2), "ratio": round(across_identities / across_seeds, 3)}
    print(f"mean |pixel difference| (0-255): other identity, same seed and camera {across_identities:.2f}; "
          f"other seed, same identity and camera {across_seeds:.2f}; ratio {result['ratio']:.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
