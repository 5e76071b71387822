"""Small-scale pre-training of the ViT: MAE, MoCo v3, supervised (DeiT) and BEiT-style.

`run(method, image_dir, out_path, cfg)` pre-trains on a folder of images (recursively) and writes
the method's official release layout, so `studylib.checkpoints.load_pretrained` reads local and
official checkpoints alike:

- mae:        {'model': encoder (timm names, fixed sin-cos pos_embed with a zero cls slot)}
- mocov3:     {'epoch', 'arch', 'state_dict': {'module.base_encoder.*', 'module.momentum_encoder.*',
               'module.predictor.*'}, 'optimizer'}
- supervised: {'model': DeiT/timm ViT incl. 'head.weight', 'head.bias'} (needs `ann_file`)
- beit:       {'model': cls_token, mask_token, patch_embed, rel_pos_bias, blocks.i.{gamma_1, gamma_2,
               attn.q_bias, attn.v_bias, ...}, norm, lm_head} (+ `<stem>.tokenizer.pth`)
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from .common import train
from .config import METHODS, PretrainConfig

__all__ = ["METHODS", "PretrainConfig", "run"]


def run(
    method: str,
    image_dir: str | Path,
    out_path: str | Path,
    cfg: PretrainConfig | None = None,
    ann_file: str | Path | None = None,
) -> dict[str, Any]:
    """Pre-train `cfg.backbone` with `method` on the images under `image_dir`; return the run summary.

    `ann_file` (COCO instances JSON) is required by, and only used by, method 'supervised'.
    """
    if method not in METHODS:
        raise ValueError(f"unknown pre-training method {method!r}; allowed: {', '.join(METHODS)}")
    if method == "supervised" and ann_file is None:
        raise ValueError("method 'supervised' needs ann_file (a COCO-format instances JSON of labelled boxes)")
    cfg = cfg or PretrainConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    module = importlib.import_module(f"{__name__}.{method}")
    base = cfg.resolved(method, dataset_len=1)  # what building needs is independent of the length
    torch.manual_seed(cfg.seed)
    task = module.build(base, image_dir, ann_file)
    cfg = cfg.resolved(method, dataset_len=len(task.dataset))
    return train(task, cfg, method, out_path)
