"""`world://LAYOUT?identities=N&seed=S` dataset URIs, rendered once into a cache folder.

They make example specs self-contained: the first job that names one renders it;
every later one (and every other worker on the machine) reuses the folder. The
folder appears by an atomic rename, so a half-rendered world is never seen.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from factory.errors import FactoryError
from factory.world.layouts import LAYOUTS, WORLD_VERSION, write_world

_OPTIONS = {"identities": int, "seed": int, "images_per_camera": int, "outfits": int}


def default_cache_dir() -> Path:
    return Path(os.environ.get("FACTORY_CACHE", Path.home() / ".cache" / "reid-factory"))


def parse_world_uri(uri: str) -> tuple[str, dict[str, int]]:
    parts = urlsplit(uri)
    if parts.scheme != "world" or parts.netloc not in LAYOUTS or parts.path not in ("", "/"):
        raise FactoryError(f"bad world URI {uri!r}: use world://LAYOUT?identities=N&seed=S, LAYOUT one of {', '.join(LAYOUTS)}")
    options: dict[str, int] = {}
    for name, values in parse_qs(parts.query, strict_parsing=bool(parts.query)).items():
        if name not in _OPTIONS:
            raise FactoryError(f"bad world URI {uri!r}: unknown option {name!r} (known: {', '.join(_OPTIONS)})")
        try:
            options[name] = _OPTIONS[name](values[-1])
        except ValueError:
            raise FactoryError(f"bad world URI {uri!r}: {name} must be an integer") from None
    if "identities" not in options:
        raise FactoryError(f"bad world URI {uri!r}: identities=N is required")
    options.setdefault("seed", 0)
    return parts.netloc, options


def resolve_world(uri: str, cache_dir: Path | None = None) -> tuple[str, Path]:
    """(layout, folder) for a world URI, rendering it first if it is not cached yet."""
    layout, options = parse_world_uri(uri)
    name = "-".join([layout, *(f"{k}{v}" for k, v in sorted(options.items())), f"v{WORLD_VERSION}"])
    folder = (cache_dir or default_cache_dir()) / "world" / name
    if (folder / "world" / "world.json").is_file():
        return layout, folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        write_world(layout, staging, **options)
        os.replace(staging, folder)
    except OSError:
        if not (folder / "world" / "world.json").is_file():  # not just another worker winning the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return layout, folder
