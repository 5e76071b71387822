"""Data: COCO-format instances, large-scale jitter, and the embedded synthetic dataset."""

from .coco import CocoInstances, SampleError, collate_fn, load_coco, read_image
from .transforms import LargeScaleJitter, RandomCropAtMost, boxes_from_masks, eval_transforms, train_transforms

__all__ = [
    "CocoInstances",
    "LargeScaleJitter",
    "RandomCropAtMost",
    "SampleError",
    "boxes_from_masks",
    "collate_fn",
    "eval_transforms",
    "load_coco",
    "read_image",
    "train_transforms",
]
