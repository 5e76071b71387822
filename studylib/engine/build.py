"""From an `ExperimentConfig` to the objects of a run: datasets and the Mask R-CNN (with its initialization).

This is the one place where the config touches the models: `models/` never reads configs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from ..config import ExperimentConfig
from ..models import PRESETS, build_backbone
from .distributed import DistInfo, barrier

RESNETS = {"resnet50": 50, "resnet101": 101}
BEIT_LAYER_SCALE = 0.1  # the layer scale a backbone is built with for a file that has one (then loaded over it)


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
def checkpoint_file(cfg: ExperimentConfig) -> Path:
    path = Path(cfg.init.checkpoint)
    if not path.is_file():
        raise ValueError(
            f"init.checkpoint = {path}: file not found (init.kind = {cfg.init.kind!r}; run its pre-training "
            f"stage or point to a release)"
        )
    return path


def resolve_init(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` with what its checkpoint file decides written in: init.format, init.abs_pos, init.rel_pos and
    init.layer_scale (the paper's rule, or its stated fallback for what the file lacks; `checkpoints.plan`).

    A random init, a ResNet or a config resolved already is returned as is. The run saves the resolved
    config (config.yaml), so it shows, e.g., `layer_scale: none` for a BEiT file without gamma_1 / gamma_2.
    """
    i = cfg.init
    resolved = None not in (i.abs_pos, i.rel_pos, i.layer_scale) and i.format != "auto"
    if i.kind == "random" or cfg.model.backbone in RESNETS or resolved:
        return cfg
    from ..checkpoints import plan

    decided = plan(checkpoint_file(cfg), i.format, i.abs_pos, i.rel_pos, i.layer_scale)
    out = copy.deepcopy(cfg)
    out.init.format, out.init.abs_pos, out.init.rel_pos = decided.format, decided.abs_pos, decided.rel_pos
    out.init.layer_scale = decided.layer_scale
    return out


def layer_scale_init(cfg: ExperimentConfig) -> float | None:
    """The backbone's layer scale: model.layer_scale for a random init; for a checkpoint, per init.layer_scale
    (read from the file when null): built (and then loaded) where the file has it, none where it has not."""
    m, i = cfg.model, cfg.init
    if i.kind == "random":
        return m.layer_scale
    mode = i.layer_scale
    if mode is None:
        mode = resolve_init(cfg).init.layer_scale if Path(i.checkpoint).is_file() else None
    if mode is None:  # no file yet (e.g. before its pre-training stage): BEiT's convention
        mode = "pt" if "beit" in (i.kind, i.format) else "none"
    if mode == "none" and m.layer_scale is not None:
        raise ValueError(
            f"experiment {cfg.name!r}: model.layer_scale = {m.layer_scale} but init.layer_scale is 'none' "
            f"(the checkpoint {i.checkpoint} has no layer scale): unset model.layer_scale"
        )
    return (m.layer_scale if m.layer_scale is not None else BEIT_LAYER_SCALE) if mode == "pt" else None


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
    kwargs["layer_scale_init"] = layer_scale_init(cfg)
    return {**kwargs, **m.overrides}


def build_model(cfg: ExperimentConfig, num_classes: int, out_dir: str | Path | None = None) -> nn.Module:
    """Mask R-CNN for `num_classes` object classes (background added here), initialized per cfg.init.

    For a ViT the initialization's `LoadReport` is written to out_dir/load_report.json; what the
    checkpoint file lacks is decided from the file (`resolve_init`).
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

        cfg = resolve_init(cfg)
        i = cfg.init
        with torch.random.fork_rng(devices=[]):  # the ViT's draws leave the adaptor's and heads' unchanged:
            vit = build_backbone(m.backbone, **backbone_kwargs(cfg))  # a seed's runs share them (paired)
        if i.kind == "random":
            report = load_pretrained(vit, None, "random", i.abs_pos, i.rel_pos, layer_scale=i.layer_scale)
        else:
            path = checkpoint_file(cfg)
            report = load_pretrained(vit, path, i.format, i.abs_pos, i.rel_pos, layer_scale=i.layer_scale)
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
