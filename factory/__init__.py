"""The producer side of the ReID synthetic data factory (see ARCHITECTURE.md).

Kept import-light on purpose: `import factory` must not load torch, diffusers or ray,
so the CLI answers `--help` and spec errors at once.
"""

from manifests.version import __version__

__all__ = ["__version__"]
