"""Checkpoints of the five initializations (random, supervised/DeiT, MoCo v3, BEiT, MAE) -> our ViT.

`load_pretrained(backbone, path, fmt="auto", abs_pos=None, rel_pos=None)` reads an official release
layout (or a timm state dict / .safetensors), applies the paper's positional rules and returns a
`LoadReport`; `detect_format` tells the layout from the keys. CLI: `python -m studylib.checkpoints
inspect PATH`.
"""

from .formats import FORMATS, detect_format, read_checkpoint
from .load import ALL_FORMATS, PAPER_RULES, TREATMENTS, LoadReport, load_pretrained, positional_flags

__all__ = [
    "ALL_FORMATS",
    "FORMATS",
    "PAPER_RULES",
    "TREATMENTS",
    "LoadReport",
    "detect_format",
    "load_pretrained",
    "positional_flags",
    "read_checkpoint",
]
