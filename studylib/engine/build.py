"""From an `ExperimentConfig` to the objects of a run: datasets and the Mask R-CNN (with its initialization).

This is the one place where the config touches the models: `models/` never reads configs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from ..config import ExperimentConfig
from ..models import PRESETS, build_backbone
from .distributed import DistInfo, barrier

RESNETS = {"resnet50": 50, "resnet101": 101}
BEIT_LAYER_SCALE = 0.1  # BEiT keeps its layer scale (paper §3.1); its release uses 0.1 for ViT-B


# -- data ------------------------------------------------------------------------------------------
def synthetic_ready(root: str | Path) -> bool:
    root = Path(root)
    return all((root / "annotations" / f"instances_{s}.json").is_file() for s in ("train", "val"))


def ensure_synthetic(cfg: ExperimentConfig, dist: DistInfo | None = None) -> Path:
    """Generate the synthetic dataset at cfg.data.root unless it is there (rank 0 only; others wait).

    `synthetic.generate` keeps an up-to-date dataset and writes a new one atomically; a dataset of
    another configuration at the root is an error (never silently used or replaced).
    """
    from ..data import synthetic

    root = Path(cfg.data.root)
    if dist is None or dist.is_main:
        syn_cfg = synthetic.preset_config(cfg.data.synthetic_preset, **cfg.data.synthetic)
        try:
            synthetic.generate(root, syn_cfg)
        except FileExistsError as e:
            raise ValueError(f"data.root = {root}: {e}") from None
    barrier()
    if not synthetic_ready(root):
        raise ValueError(f"data.root = {root}: no synthetic dataset there (annotations/instances_{{train,val}}.json)")
    return root


def data_paths(cfg: ExperimentConfig) -> dict[str, Path]:
    if cfg.data.kind == "synthetic":
        root = Path(cfg.data.root)
        return {
            "train_ann": root / "annotations" / "instances_train.json",
            "train_images": root / "images" / "train",
            "val_ann": root / "annotations" / "instances_val.json",
            "val_images": root / "images" / "val",
        }
    return {k: Path(getattr(cfg.data, k)) for k in ("train_ann", "train_images", "val_ann", "val_images")}


def first(dataset: Dataset, n: int | None, key: str) -> Dataset:
    """The first `n` items (a low-data regime); all of them for None."""
    if n is None:
        return dataset
    if not 1 <= n <= len(dataset):
        raise ValueError(f"{key} = {n}: the dataset has {len(dataset)} images")
    return Subset(dataset, range(n))


def build_datasets(cfg: ExperimentConfig, dist: DistInfo | None = None) -> tuple[Dataset, Dataset]:
    """(train with large-scale jitter, val without transforms), each cut to its configured size."""
    from ..data import CocoInstances, LargeScaleJitter

    if cfg.data.kind == "synthetic":
        ensure_synthetic(cfg, dist)
    paths = data_paths(cfg)
    for key, p in paths.items():
        if not p.exists():
            raise ValueError(f"data.{key} = {p} does not exist")
    train = CocoInstances(
        paths["train_ann"], paths["train_images"], LargeScaleJitter(cfg.data.img_size, tuple(cfg.data.scale_range))
    )
    val = CocoInstances(paths["val_ann"], paths["val_images"])
    return first(train, cfg.data.num_train_images, "data.num_train_images"), first(
        val, cfg.data.num_val_images, "data.num_val_images"
    )


def base_dataset(dataset: Dataset):
    """The `CocoInstances` under a `Subset`."""
    return dataset.dataset if isinstance(dataset, Subset) else dataset


# -- model -----------------------------------------------------------------------------------------
def backbone_kwargs(cfg: ExperimentConfig) -> dict:
    """`build_backbone` keywords from the config: attention layout, positions, layer scale, drop path."""
    from ..checkpoints import positional_flags

    m = cfg.model
    kwargs: dict = {
        "img_size": cfg.data.img_size,
        "drop_path_rate": m.drop_path,
        "use_checkpoint": m.use_checkpoint,
        **positional_flags(cfg.init.abs_pos, cfg.init.rel_pos),
    }
    depth = {**PRESETS[m.backbone], **m.overrides}.get("depth", 12)
    kwargs["global_blocks"] = {"window": [], "hybrid": None, "global": list(range(depth))}[m.attention]
    if m.window_size is not None:
        kwargs["window_size"] = m.window_size
    layer_scale = (
        m.layer_scale
        if m.layer_scale is not None
        else (BEIT_LAYER_SCALE if "beit" in (cfg.init.kind, cfg.init.format) else None)
    )
    kwargs["layer_scale_init"] = layer_scale
    return {**kwargs, **m.overrides}


def build_model(cfg: ExperimentConfig, num_classes: int, out_dir: str | Path | None = None) -> nn.Module:
    """Mask R-CNN for `num_classes` object classes (background added here), initialized per cfg.init.

    For a ViT the initialization's `LoadReport` is written to out_dir/load_report.json.
    """
    from ..models.adaptor import build_adaptor
    from ..models.detector import build_mask_rcnn, build_resnet_fpn_backbone

    m = cfg.model
    if m.backbone in RESNETS:
        if cfg.init.kind != "random":
            raise ValueError(
                f"model.backbone = {m.backbone!r} is the from-scratch baseline: init.kind must be "
                f"'random', got {cfg.init.kind!r}"
            )
        backbone = build_resnet_fpn_backbone(RESNETS[m.backbone], norm=m.norm, out_channels=m.head_width)
    else:
        from ..checkpoints import load_pretrained

        with torch.random.fork_rng(devices=[]):  # the ViT's draws leave the adaptor's and heads' unchanged:
            vit = build_backbone(m.backbone, **backbone_kwargs(cfg))  # a seed's runs share them (paired)
        if cfg.init.kind == "random":
            report = load_pretrained(vit, None, "random", cfg.init.abs_pos, cfg.init.rel_pos)
        else:
            if not Path(cfg.init.checkpoint).is_file():
                raise ValueError(
                    f"init.checkpoint = {cfg.init.checkpoint}: file not found (init.kind = "
                    f"{cfg.init.kind!r}; run its pre-training stage or point to a release)"
                )
            report = load_pretrained(vit, cfg.init.checkpoint, cfg.init.format, cfg.init.abs_pos, cfg.init.rel_pos)
        if out_dir is not None:
            report.save(Path(out_dir) / "load_report.json")
        backbone = build_adaptor(vit, m.adaptor, out_channels=m.head_width, norm=m.norm)
    return build_mask_rcnn(
        backbone,
        num_classes=num_classes + 1,
        img_size=cfg.data.img_size,
        head_width=m.head_width,
        fc_dim=m.fc_dim,
        norm=m.norm,
        rois_per_image=m.rois_per_image,
        **m.detector_kwargs,
    )
