"""Evaluation: Mask R-CNN outputs -> COCO results, COCO box/mask AP, TIDE error analysis."""

from .coco import BACKENDS, IOU_TYPES, STAT_NAMES, evaluate_results, load_gt, per_category_ap, stat_keys
from .results import masks_to_rle, predictions_to_results, save_results
from .tide import ERROR_NAMES, tide_errors

__all__ = [
    "BACKENDS",
    "ERROR_NAMES",
    "IOU_TYPES",
    "STAT_NAMES",
    "evaluate_results",
    "load_gt",
    "masks_to_rle",
    "per_category_ap",
    "predictions_to_results",
    "save_results",
    "stat_keys",
    "tide_errors",
]
