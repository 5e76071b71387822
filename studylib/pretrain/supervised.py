"""Supervised pre-training, DeiT style, on crops of labelled objects.

The embedded default has no ImageNet; its labelled classification data are the object boxes of a
COCO-format *train* annotation file (for the synthetic dataset: `annotations/instances_train.json`,
never the val split), each cropped with some context (`crop_context`) and classified among the
file's categories. The model is timm's `VisionTransformer` (class token, learned position
embedding, `head`), the layout of DeiT's release `{'model': {..., 'head.weight', 'head.bias'}}`.
Augmentation kept simple: random resized crop, flip, color jitter, random erasing, label
smoothing (no RandAugment, mixup/cutmix or repeated augmentation).

References: facebookresearch/deit main.py, datasets.py, models.py.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .common import Task, normalize, read_image
from .config import PretrainConfig


class ObjectCrops(Dataset):
    """Labelled object crops of a COCO instances file: items `(transform(crop uint8), label 0..K-1)`.

    Crowd regions and boxes under 2 px are not objects to classify; they are counted
    (`skipped_crowd`, `skipped_small`) and reported in the run summary.
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path, transform, context: float = 1.2):
        self.ann_file, self.image_dir, self.transform, self.context = (
            Path(ann_file),
            Path(image_dir),
            transform,
            context,
        )
        try:
            data = json.loads(self.ann_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read annotation file {self.ann_file}: {e}") from None
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"annotation file {self.ann_file} has no {key!r} key")
        self.category_ids = sorted(c["id"] for c in data["categories"])
        self.class_names = {c["id"]: c.get("name", str(c["id"])) for c in data["categories"]}
        label_of = {cid: i for i, cid in enumerate(self.category_ids)}
        files = {im["id"]: im["file_name"] for im in data["images"]}
        self.items: list[tuple[Path, tuple[float, float, float, float], int]] = []
        self.skipped_crowd = self.skipped_small = 0
        for a in data["annotations"]:
            if a.get("iscrowd", 0):
                self.skipped_crowd += 1
                continue
            x, y, w, h = a["bbox"]
            if w < 2 or h < 2:
                self.skipped_small += 1
                continue
            if a["image_id"] not in files:
                raise ValueError(f"annotation {a.get('id')} in {self.ann_file} names unknown image_id {a['image_id']}")
            if a["category_id"] not in label_of:
                raise ValueError(
                    f"annotation {a.get('id')} in {self.ann_file} has unknown category_id "
                    f"{a['category_id']}; allowed: {self.category_ids}"
                )
            self.items.append((self.image_dir / files[a["image_id"]], (x, y, w, h), label_of[a["category_id"]]))
        if not self.items:
            raise ValueError(f"annotation file {self.ann_file} has no usable (non-crowd, >= 2 px) boxes")

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.items)

    def crop(self, i: int) -> torch.Tensor:
        """The i-th object with context: its box scaled by `context` about the centre, clipped."""
        path, (x, y, w, h), _ = self.items[i]
        if not path.is_file():
            raise ValueError(f"image {path} of {self.ann_file} not found under {self.image_dir}")
        image = read_image(path)
        H, W = image.shape[-2:]
        cx, cy, s = x + w / 2, y + h / 2, self.context
        x0, x1 = max(0, int(cx - s * w / 2)), min(W, int(round(cx + s * w / 2)))
        y0, y1 = max(0, int(cy - s * h / 2)), min(H, int(round(cy + s * h / 2)))
        return image[:, y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.crop(i)), self.items[i][2]


class Classifier(nn.Module):
    """A timm ViT with a linear head; `forward((images, labels), progress)` -> smoothed cross-entropy."""

    def __init__(self, vit: VisionTransformer, label_smoothing: float = 0.1):
        super().__init__()
        self.vit, self.label_smoothing = vit, label_smoothing

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor], progress: float = 0.0) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self.vit(images), labels, label_smoothing=self.label_smoothing)


def pretrain_transform(cfg: PretrainConfig) -> v2.Transform:
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                cfg.img_size,
                scale=(cfg.min_crop_scale, 1.0),
                interpolation=v2.InterpolationMode.BICUBIC,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.3, 0.3, 0.3),
            normalize(),
            v2.RandomErasing(p=0.25),
        ]
    )


def build(cfg: PretrainConfig, image_dir: str | Path, ann_file: str | Path | None = None) -> Task:
    if ann_file is None:
        raise ValueError("method 'supervised' needs ann_file (a COCO-format instances JSON of labelled boxes)")
    dataset = ObjectCrops(ann_file, image_dir, pretrain_transform(cfg), cfg.crop_context)
    enc = cfg.encoder_kwargs()
    vit = VisionTransformer(
        img_size=cfg.img_size,
        patch_size=enc["patch_size"],
        embed_dim=enc["embed_dim"],
        depth=enc["depth"],
        num_heads=enc["num_heads"],
        mlp_ratio=enc["mlp_ratio"],
        qkv_bias=True,
        num_classes=dataset.num_classes,
        global_pool="token",
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_path_rate=cfg.drop_path_rate,
    )
    model = Classifier(vit, cfg.label_smoothing)

    def release(step: int, optimizer: torch.optim.Optimizer) -> dict:
        return {"model": vit.state_dict()}

    extra = {
        "ann_file": str(ann_file),
        "num_classes": dataset.num_classes,
        "crops": len(dataset),
        "skipped_crowd": dataset.skipped_crowd,
        "skipped_small": dataset.skipped_small,
        "classes": [dataset.class_names[c] for c in dataset.category_ids],
    }
    return Task(model, dataset, release, no_weight_decay=("*cls_token", "*pos_embed"), extra=extra)
