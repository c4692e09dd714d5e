"""ReID evaluation (docs/METHODS.md §5) as pure numpy: ranking metrics and benchmark protocols.

Kept free of torch so manifests, tests and reports can score features anywhere.
"""

from factory.evaluation.metrics import JunkRule, Metric, Scores, evaluate, l2_normalize, mean_scores, pairwise_distance
from factory.evaluation.protocols import (
    CC_MODES,
    LLCM_DIRECTIONS,
    REGDB_DIRECTIONS,
    SYSU_GALLERY_CAMERAS,
    FeatureSet,
    cc_junk,
    evaluate_clothes_changing,
    evaluate_llcm,
    evaluate_market,
    evaluate_prcc,
    evaluate_regdb,
    evaluate_sysu,
    market_junk,
    same_pid_same_cam,
    single_shot_gallery,
    sysu_gallery_trial,
    sysu_junk,
)

__all__ = [
    "CC_MODES",
    "LLCM_DIRECTIONS",
    "REGDB_DIRECTIONS",
    "SYSU_GALLERY_CAMERAS",
    "FeatureSet",
    "JunkRule",
    "Metric",
    "Scores",
    "cc_junk",
    "evaluate",
    "evaluate_clothes_changing",
    "evaluate_llcm",
    "evaluate_market",
    "evaluate_prcc",
    "evaluate_regdb",
    "evaluate_sysu",
    "l2_normalize",
    "market_junk",
    "mean_scores",
    "pairwise_distance",
    "same_pid_same_cam",
    "single_shot_gallery",
    "sysu_gallery_trial",
    "sysu_junk",
]
