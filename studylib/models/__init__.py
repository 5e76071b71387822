"""Models: know nothing of YAML, files or experiments."""

from .adaptor import build_adaptor
from .detector import FixedSizeTransform, build_mask_rcnn, build_resnet_fpn_backbone
from .vit import PRESETS, ViT, build_backbone, default_global_blocks

__all__ = [
    "PRESETS",
    "ViT",
    "build_backbone",
    "default_global_blocks",
    "build_adaptor",
    "build_mask_rcnn",
    "build_resnet_fpn_backbone",
    "FixedSizeTransform",
]
