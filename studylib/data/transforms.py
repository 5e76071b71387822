"""Large-scale jitter (LSJ) for training and the evaluation transform, on torchvision.transforms.v2.

LSJ as in the paper (§2.3, from Ghiasi et al. 2021) and ViTDet's detectron2 loader: resize so the
image fits the target square times a random scale in [0.1, 2.0], take a random crop of at most the
target size (no padding here: the detector pads to the fixed square), flip horizontally, then
recompute tight boxes from the cropped masks ("recompute boxes due to cropping") and drop
instances left empty. Evaluation applies nothing: the detector resizes and pads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


def _pair(size: int | tuple[int, int], name: str) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ValueError(f"{name} must be a positive int or (height, width) of ints, got {size!r}")
    return h, w


class RandomCropAtMost(v2.Transform):
    """Random crop to at most `size` (h, w); a side shorter than the crop is kept whole, never padded.

    Hand-written because v2.RandomCrop either pads small images or fails on them
    (detectron2's FixedSizeCrop(pad=False) has these semantics).
    """

    def __init__(self, size: int | tuple[int, int]) -> None:
        super().__init__()
        self.size = _pair(size, "size")

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        ch, cw = min(h, self.size[0]), min(w, self.size[1])
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        return dict(top=top, left=left, height=ch, width=cw)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes (N, 4) of (N, H, W) masks, pixel-edge convention like pycocotools' toBbox
    (a mask covering columns 3..5 gives x1=3, x2=6); empty masks give zero boxes."""
    n = masks.shape[0]
    boxes = torch.zeros((n, 4), dtype=torch.float32)
    if n == 0:
        return boxes
    cols = masks.any(dim=1).bool()  # (N, W); any() keeps uint8 for uint8 input
    rows = masks.any(dim=2).bool()  # (N, H)
    nonempty = cols.any(dim=1)
    ar_w = torch.arange(masks.shape[2])
    ar_h = torch.arange(masks.shape[1])
    big = torch.iinfo(torch.int64).max
    x1 = torch.where(cols, ar_w, big).amin(dim=1)
    x2 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    y1 = torch.where(rows, ar_h, big).amin(dim=1)
    y2 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    boxes[nonempty] = torch.stack([x1, y1, x2, y2], dim=1)[nonempty].float()
    return boxes


def mask_area(masks: torch.Tensor) -> torch.Tensor:
    """Pixel count per mask (N,) float32; np.count_nonzero is ~100x faster than torch's uint8 sum."""
    flat = masks.detach().cpu().reshape(masks.shape[0], masks.shape[1] * masks.shape[2]).numpy().view(np.bool_)
    return torch.tensor([np.count_nonzero(row) for row in flat], dtype=torch.float32)


def _instance_fields(sample: Any) -> tuple[torch.Tensor, ...]:
    """What SanitizeBoundingBoxes filters along with boxes (masks it finds by itself)."""
    target = sample[1]
    return tuple(target[k] for k in ("labels", "area", "iscrowd") if isinstance(target.get(k), torch.Tensor))


class LargeScaleJitter(nn.Module):
    """LSJ on `(image, target)`: images, boxes and masks together; each output side <= target.

    `target` holds tv_tensors `boxes` (BoundingBoxes) and `masks` (Mask, N x H x W) plus `labels`,
    `area`, `iscrowd` tensors; boxes are recomputed from the masks after the crop, instances
    whose box is under one pixel are removed, and `area` becomes the mask's pixel count.
    The image keeps its dtype (uint8 in, uint8 out: resizing uint8 is the fast path).
    """

    def __init__(
        self,
        target_size: int | tuple[int, int],
        scale_range: tuple[float, float] = (0.1, 2.0),
        hflip_prob: float = 0.5,
    ) -> None:
        super().__init__()
        self.target_size = _pair(target_size, "target_size")
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {tuple(scale_range)}")
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        self.scale_range = (float(lo), float(hi))
        self.hflip_prob = hflip_prob
        h, w = self.target_size
        # v2.ScaleJitter takes target_size as (width, height): r = min(ts[0] / W, ts[1] / H) * scale
        self.scale = v2.ScaleJitter((w, h), scale_range=self.scale_range, antialias=True)
        self.crop = RandomCropAtMost(self.target_size)
        self.flip = v2.RandomHorizontalFlip(hflip_prob)
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_instance_fields)

    def forward(self, image: Any, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        image, target = self.flip(*self.crop(*self.scale(image, target)))
        target = dict(target)
        masks = target.get("masks")
        if masks is not None:
            boxes = target["boxes"]
            target["boxes"] = tv_tensors.wrap(boxes_from_masks(masks).to(boxes.dtype), like=boxes)
        image, target = self.sanitize(image, target)
        if masks is not None and isinstance(target.get("area"), torch.Tensor):
            target["area"] = mask_area(target["masks"].as_subclass(torch.Tensor))
        return image, target

    def extra_repr(self) -> str:
        return f"target_size={self.target_size}, scale_range={self.scale_range}, hflip_prob={self.hflip_prob}"


def eval_transforms() -> v2.Compose:
    """Evaluation: only make the image a float tensor in [0, 1]; the detector resizes and pads."""
    return v2.Compose([v2.ToImage(), v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)])


def train_transforms(target_size: int, scale_range: tuple[float, float] = (0.1, 2.0)) -> LargeScaleJitter:
    """The paper's training augmentation: LSJ only (no other augmentation, §2.3)."""
    return LargeScaleJitter(target_size, scale_range)
