"""Checkpoints of the five initializations (random, supervised/DeiT, MoCo v3, BEiT, MAE) -> our ViT.

`load_pretrained(backbone, path, fmt="auto", abs_pos=None, rel_pos=None)` reads an official release
layout (or a timm state dict / .safetensors), applies the paper's positional rules (or, for what the
file lacks, their stated fallback: `plan` says which before a model is built) and returns a
`LoadReport`; `detect_format` tells the layout from the keys. CLI: `python -m studylib.checkpoints
inspect PATH`.
"""

from .formats import FORMATS, detect_format, read_checkpoint
from .load import (
    ALL_FORMATS,
    LAYER_SCALE,
    PAPER_RULES,
    TREATMENTS,
    LoadReport,
    Plan,
    load_pretrained,
    plan,
    positional_flags,
)

__all__ = [
    "ALL_FORMATS",
    "FORMATS",
    "LAYER_SCALE",
    "PAPER_RULES",
    "Plan",
    "TREATMENTS",
    "LoadReport",
    "detect_format",
    "load_pretrained",
    "plan",
    "positional_flags",
    "read_checkpoint",
]
