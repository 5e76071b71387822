"""studylib: Mask R-CNN with a plain ViT backbone, the study of Li et al. (2021), reproducible.

Public entry points: `build_backbone`, `ViT`, `load_pretrained` (checkpoints of the five
initializations). Submodules: `models`, `checkpoints`, `data`, `evaluation`, `engine`,
`pretrain`, `report`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import PRESETS, ViT, build_backbone  # noqa: F401  (for type checkers; LAZY at run time)

__version__ = "0.1.0"
LAZY = ("PRESETS", "ViT", "build_backbone")  # studylib.models' names, imported on first use


def __getattr__(name: str) -> Any:
    """`PRESETS`, `ViT`, `build_backbone` on first use (PEP 562): `import studylib` alone stays free of torch,
    so the light commands (`python -m studylib.notebook`, the study's `check`) start in a fraction of a second."""
    if name in LAZY:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'studylib' has no attribute {name!r}")


def load_pretrained(backbone, path, fmt="auto", abs_pos=None, rel_pos=None, **kwargs):
    """Load a checkpoint into a backbone; see `studylib.checkpoints.load_pretrained`."""
    from .checkpoints import load_pretrained as _load

    return _load(backbone, path, fmt=fmt, abs_pos=abs_pos, rel_pos=rel_pos, **kwargs)


def __dir__() -> list[str]:
    return sorted([*globals(), *LAZY])


__all__ = [*LAZY, "load_pretrained", "__version__"]
