"""Model references, presets, identity banks and the text-to-image wrapper.

Names are resolved lazily, so that `from factory.models import ModelRef` in spec parsing
does not pay for importing torch and diffusers.
"""

from __future__ import annotations

import importlib
import logging

_EXPORTS = {
    "ModelRef": "reference",
    "PRESET_VERSION": "presets",
    "build_preset": "presets",
    "preset_path": "presets",
    "build_clip_tokenizer": "tokenizer",
    "IdentityBank": "bank",
    "IDENTITY": "pipeline",
    "SCHEDULERS": "pipeline",
    "TextToImage": "pipeline",
    "random_identity_vector": "pipeline",
}
__all__ = list(_EXPORTS)


class _NoTorchvisionNotice(logging.Filter):
    """Drops transformers' notice that its image processors fall back to PIL without torchvision.

    diffusers imports those processors with every pipeline, so each actor would print it.
    The factory never uses them and does not depend on torchvision; actors' other warnings
    reach the driver's log (the runtime forwards them), and this one would only teach
    users to skip over warnings.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionNotice())


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
