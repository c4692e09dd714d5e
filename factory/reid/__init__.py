"""AGW/CAJ two-stream VI-ReID models, losses, CAJ channel augmentation and a minimal CPU trainer.

The recipes are in docs/METHODS.md §6.
"""

from factory.reid.backbone import PRESETS, GeM, NonLocal, TwoStreamResNet, build_model
from factory.reid.losses import ADPLoss, CrossEntropyLabelSmooth, WRTLoss

__all__ = [
    "PRESETS",
    "ADPLoss",
    "CrossEntropyLabelSmooth",
    "GeM",
    "NonLocal",
    "TwoStreamResNet",
    "WRTLoss",
    "build_model",
]
