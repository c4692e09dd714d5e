"""The producer side of the ReID synthetic data factory (see ARCHITECTURE.md).

Kept import-light on purpose: `import factory` must not load torch, diffusers or ray,
so the CLI answers `--help` and spec errors at once.
"""

from manifests.version import __version__

__all__ = ["__version__", "run", "submit"]


def __getattr__(name: str):
    """`factory.run` and `factory.submit`, imported on first use (see `factory.api`)."""
    if name in ("run", "submit"):
        from factory import api

        return getattr(api, name)
    raise AttributeError(f"module 'factory' has no attribute {name!r}")
