"""Models: know nothing of YAML, files or experiments."""
from .vit import PRESETS, ViT, build_backbone, default_global_blocks

__all__ = ["PRESETS", "ViT", "build_backbone", "default_global_blocks"]
