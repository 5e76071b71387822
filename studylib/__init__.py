"""studylib: Mask R-CNN with a plain ViT backbone, the study of Li et al. (2021), reproducible.

Public entry points: `build_backbone`, `ViT`, `load_pretrained` (checkpoints of the five
initializations). Submodules: `models`, `checkpoints`, `data`, `evaluation`, `engine`,
`pretrain`, `report`.
"""

from .models import PRESETS, ViT, build_backbone

__version__ = "0.1.0"


def load_pretrained(backbone, path, fmt="auto", abs_pos=None, rel_pos=None, **kwargs):
    """Load a checkpoint into a backbone; see `studylib.checkpoints.load_pretrained`."""
    from .checkpoints import load_pretrained as _load

    return _load(backbone, path, fmt=fmt, abs_pos=abs_pos, rel_pos=rel_pos, **kwargs)


__all__ = ["PRESETS", "ViT", "build_backbone", "load_pretrained", "__version__"]
