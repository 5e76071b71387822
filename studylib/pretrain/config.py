"""`PretrainConfig`: one typed record for all four pre-training methods.

Fields left `None` take the method's default (`METHOD_DEFAULTS`), so one config type serves MAE,
MoCo v3, supervised (DeiT) and BEiT while each keeps the recipe of its paper, scaled down.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from studylib.models.vit import PRESETS

METHODS = ("mae", "mocov3", "supervised", "beit")

# Backbone keywords a user may override on top of the preset (the ViT shape, nothing detection-only).
ENCODER_KEYS = ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio")

# Per-method defaults. Learning rates are higher than the originals' (e.g. MAE 1.5e-4 x bs/256)
# because the embedded default trains a width-128 ViT for ~3 CPU minutes, not 800 epochs. Steps are
# set so that each method takes about 3 minutes on one busy CPU core (benchmarks/pretrain.py).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "mae": dict(
        steps=500,
        lr=1.5e-3,
        weight_decay=0.05,
        betas=(0.9, 0.95),
        mask_ratio=0.75,
        clip_grad=0.0,
        drop_path_rate=0.0,
        min_crop_scale=0.2,
    ),
    "mocov3": dict(
        steps=100,
        lr=1.5e-3,
        weight_decay=0.1,
        betas=(0.9, 0.999),
        mask_ratio=0.0,
        clip_grad=0.0,
        drop_path_rate=0.0,
        min_crop_scale=0.08,
    ),
    "supervised": dict(
        steps=300,
        lr=1e-3,
        weight_decay=0.05,
        betas=(0.9, 0.999),
        mask_ratio=0.0,
        clip_grad=0.0,
        drop_path_rate=0.1,
        min_crop_scale=0.35,
    ),
    "beit": dict(
        steps=300,
        lr=1.5e-3,
        weight_decay=0.05,
        betas=(0.9, 0.999),
        mask_ratio=0.4,
        clip_grad=3.0,
        drop_path_rate=0.1,
        min_crop_scale=0.08,
    ),
}

# Fields that change how a run is executed but not what it computes (ignored when resuming).
RUN_FIELDS = ("checkpoint_every", "stop_after", "resume", "progress", "threads")


@dataclass
class PretrainConfig:
    """Pre-training settings. `None` means "the method's default" (see `METHOD_DEFAULTS`)."""

    backbone: str = "vit_micro"  # preset of studylib.models.vit.PRESETS
    overrides: dict[str, Any] = field(default_factory=dict)  # ENCODER_KEYS on top of the preset
    img_size: int | None = None  # None: the preset's pretrain_img_size (64 for vit_micro)
    # length: exactly one of steps / epochs (neither: the method's default steps)
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 64
    # optimization (AdamW, linear warmup + half-cosine decay per step)
    lr: float | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] | None = None
    warmup_steps: int | None = None  # None: 5% of the steps
    clip_grad: float | None = None  # 0: no clipping
    drop_path_rate: float | None = None
    min_crop_scale: float | None = None  # RandomResizedCrop scale=(min_crop_scale, 1)
    seed: int = 0
    # MAE
    mask_ratio: float | None = None  # MAE: fraction removed; BEiT: fraction masked
    decoder_embed_dim: int = 64
    decoder_depth: int = 2
    decoder_num_heads: int = 4
    norm_pix_loss: bool = True
    save_decoder: bool = False  # also write decoder keys (MAE's "_full" release)
    # MoCo v3
    moco_dim: int = 64
    moco_mlp_dim: int = 512
    moco_m: float = 0.99
    moco_t: float = 0.2
    stop_grad_conv1: bool = True  # frozen random patch embedding
    # supervised (DeiT)
    label_smoothing: float = 0.1
    crop_context: float = 1.2  # object crops are the box scaled by this about its centre
    # BEiT
    num_tokens: int = 128  # k-means codebook size (the dVAE has 8192)
    tokenizer_images: int = 256  # augmented views the codebook is fit on
    kmeans_iters: int = 20
    min_mask_patches: int = 4  # smallest masking block (BEiT: 16 of 196 patches)
    layer_scale_init: float = 0.1
    # execution (do not change the result)
    checkpoint_every: int = 100  # write the resume state every N steps (and at the end)
    stop_after: int | None = None  # stop at this step (resume later), for time-sliced jobs
    resume: bool = False
    progress: bool = True
    threads: int | None = None  # torch.set_num_threads (1 is fastest on a shared 2-core box)

    def encoder_kwargs(self) -> dict[str, Any]:
        """The ViT shape: the preset's values with `overrides` applied."""
        if self.backbone not in PRESETS:
            raise ValueError(f"unknown backbone preset {self.backbone!r}; allowed: {', '.join(PRESETS)}")
        bad = sorted(set(self.overrides) - set(ENCODER_KEYS))
        if bad:
            raise ValueError(f"overrides {bad} not allowed for pre-training; allowed: {', '.join(ENCODER_KEYS)}")
        preset = {**PRESETS[self.backbone], **self.overrides}
        return dict(
            embed_dim=preset.get("embed_dim", 768),
            depth=preset.get("depth", 12),
            num_heads=preset.get("num_heads", 12),
            patch_size=preset.get("patch_size", 16),
            mlp_ratio=preset.get("mlp_ratio", 4.0),
        )

    def resolved(self, method: str, dataset_len: int | None = None) -> "PretrainConfig":
        """A copy with every `None` filled from the preset and the method's defaults, validated."""
        if method not in METHODS:
            raise ValueError(f"unknown pre-training method {method!r}; allowed: {', '.join(METHODS)}")
        enc = self.encoder_kwargs()
        cfg = dataclasses.replace(self, overrides=dict(self.overrides))
        for k, v in METHOD_DEFAULTS[method].items():
            if k != "steps" and getattr(cfg, k) is None:
                setattr(cfg, k, v)
        cfg.betas = tuple(cfg.betas)
        if cfg.img_size is None:
            cfg.img_size = {**PRESETS[cfg.backbone], **cfg.overrides}.get("pretrain_img_size", 224)
        if cfg.img_size % enc["patch_size"]:
            raise ValueError(f"img_size={cfg.img_size} is not a multiple of patch_size={enc['patch_size']}")
        if cfg.steps is not None and cfg.epochs is not None:
            raise ValueError(f"give steps ({cfg.steps}) or epochs ({cfg.epochs}), not both")
        if cfg.epochs is not None:
            if cfg.epochs <= 0:
                raise ValueError(f"epochs={cfg.epochs} must be > 0")
            if dataset_len is None:
                raise ValueError("epochs need the dataset size; resolve with dataset_len")
            cfg.steps = max(1, math.ceil(cfg.epochs * dataset_len / cfg.batch_size))
        elif cfg.steps is None:
            cfg.steps = METHOD_DEFAULTS[method]["steps"]
        if cfg.steps < 1:
            raise ValueError(f"steps={cfg.steps} must be >= 1")
        if cfg.warmup_steps is None:
            cfg.warmup_steps = max(1, round(0.05 * cfg.steps))
        if not 0 <= cfg.warmup_steps <= cfg.steps:
            raise ValueError(f"warmup_steps={cfg.warmup_steps} must be in 0..steps={cfg.steps}")
        if cfg.batch_size < 2:
            raise ValueError(f"batch_size={cfg.batch_size} must be >= 2 (MoCo v3 and BN heads need pairs)")
        if method in ("mae", "beit") and not 0 < cfg.mask_ratio < 1:
            raise ValueError(f"mask_ratio={cfg.mask_ratio} must be in (0, 1) for {method}")
        if not 0 < cfg.min_crop_scale <= 1:
            raise ValueError(f"min_crop_scale={cfg.min_crop_scale} must be in (0, 1]")
        if cfg.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every={cfg.checkpoint_every} must be >= 1")
        if cfg.stop_after is not None and cfg.stop_after < 1:
            raise ValueError(f"stop_after={cfg.stop_after} must be >= 1")
        return cfg

    def result_dict(self) -> dict[str, Any]:
        """The fields that determine the result (everything but RUN_FIELDS), for resume checks."""
        d = dataclasses.asdict(self)
        for k in RUN_FIELDS:
            d.pop(k)
        d["betas"] = list(d["betas"]) if d["betas"] is not None else None
        return d
