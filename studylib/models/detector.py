"""Mask R-CNN with the paper's upgraded modules, on torchvision's `MaskRCNN`.

`build_mask_rcnn(backbone, num_classes, img_size, ...)` takes a backbone from `build_adaptor`
(ViT + adaptor + FPN) or `build_resnet_fpn_backbone` (the CNN baseline) and adds the heads of
Li et al. 2021 §2.2 (= detectron2's LSJ "new baselines" = torchvision `maskrcnn_resnet50_fpn_v2`):
BatchNorm in the FPN (built by the backbone), a 2-conv RPN head, a 4conv+1fc box head with BN, a
4-conv mask head with BN, anchors 8x each level's stride (32-512 over P2-P6) with aspect ratios
{0.5, 1, 2}, 512 RoIs per image.

`FixedSizeTransform` replaces torchvision's resize-and-pad so that every batch is exactly
img_size x img_size, as the paper does in training and inference: training images (from
large-scale jitter, each side <= img_size) are only normalized and padded; inference images are
resized so that the longest side is img_size (aspect kept) and padded; predictions are mapped back
to the original image size by torchvision's `postprocess`.

The detector sees labels 1..K (0 is background); COCO category ids are mapped by the dataset.

References: torchvision models/detection/{mask_rcnn,faster_rcnn,transform}.py; detectron2
configs/new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _resize_image_and_masks, resize_boxes
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import initLevelMapper

from .adaptor import make_norm_layer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAPER_IMG_SIZE = 1024
ANCHOR_TO_STRIDE = 8  # the paper's anchors are 8x their level's stride: 32 px at stride 4 ... 512 px at stride 64
ASPECT_RATIOS = (0.5, 1.0, 2.0)
CANONICAL_SCALE = 224  # FPN level assignment: a 224-px RoI goes to the stride-16 level (at 1024 x 1024)


class FixedSizeTransform(GeneralizedRCNNTransform):
    """Normalize, resize (inference only, longest side -> img_size) and pad to exactly img_size x img_size."""

    def __init__(
        self, img_size: int, image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD
    ):
        super().__init__(
            min_size=img_size,
            max_size=img_size,
            image_mean=list(image_mean),
            image_std=list(image_std),
            size_divisible=img_size,
        )
        self.img_size = img_size

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """Inference size of an h x w image: longest side img_size, the other rounded, aspect kept."""
        scale = self.img_size / max(h, w)
        return (self.img_size, max(1, round(w * scale))) if h >= w else (max(1, round(h * scale)), self.img_size)

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None):
        h, w = image.shape[-2:]
        if self.training:  # large-scale jitter already resized and cropped
            if h > self.img_size or w > self.img_size:
                raise ValueError(
                    f"training image of size {h}x{w} exceeds img_size={self.img_size}: "
                    f"apply large-scale jitter to {self.img_size}x{self.img_size} first"
                )
            return image, target
        size = self.resized_size(h, w)
        image, target = _resize_image_and_masks(
            image, self.img_size, self.img_size, target, fixed_size=(size[1], size[0])
        )  # (width, height)
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"], [h, w], list(size))
        return image, target

    def batch_images(self, images: list[torch.Tensor], size_divisible: int = 32) -> torch.Tensor:
        batch = super().batch_images(images, size_divisible=self.img_size)
        assert batch.shape[-2:] == (self.img_size, self.img_size), batch.shape
        return batch


def default_anchor_sizes(strides: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """The paper's anchors, 8x each pyramid level's stride (32, 64, ..., 512 over P2-P6 at patch 16).

    They follow the strides, not the image size: with patch 8 the pyramid's strides halve and so do
    the anchors (16..256), which keeps the paper's anchor density per level. (Scaling 32..512 by
    img_size/1024 instead put 4-64 px anchors on strides 2-32 at the embedded 128² scale, anchors
    only 2x their stride: measured, random init reached 35.9 box AP with these vs ~19 with those.)
    A single-scale backbone (one level of stride s) gets the five sizes of the pyramid it replaces,
    8 x (s/4, s/2, s, 2s, 4s): 32..512 at s = 16, the paper's single-scale setting (Table 2).
    """
    if len(strides) == 1:
        s = strides[0]
        return (tuple(max(1, round(ANCHOR_TO_STRIDE * s * f)) for f in (0.25, 0.5, 1, 2, 4)),)
    return tuple((ANCHOR_TO_STRIDE * int(s),) for s in strides)


def roi_align(backbone: nn.Module, output_size: int, canonical_scale: int) -> MultiScaleRoIAlign:
    """RoIAlign over `backbone.featmap_names` with per-level scales fixed from `backbone.strides`.

    torchvision infers the scales once, from the first batch's unpadded image sizes; with small
    jittered training images that guess is wrong and then cached, so we set them from the strides.
    """
    names = list(backbone.featmap_names)
    levels = [math.log2(backbone.strides[n]) for n in names]
    if any(k != int(k) for k in levels):
        raise ValueError(f"backbone strides {backbone.strides} must be powers of 2 for RoIAlign")
    pool = MultiScaleRoIAlign(names, output_size, sampling_ratio=2)
    k_min, k_max = int(levels[0]), int(levels[-1])
    pool.scales = [2.0**-k for k in levels]
    # the canonical level is the third of P2..P5 (stride 16 at patch 16); clamped for one level
    pool.map_levels = initLevelMapper(
        k_min, k_max, canonical_scale=canonical_scale, canonical_level=min(k_min + 2, k_max)
    )
    return pool


_OWNED = (
    "min_size",
    "max_size",
    "image_mean",
    "image_std",
    "rpn_anchor_generator",
    "rpn_head",
    "box_roi_pool",
    "box_head",
    "box_predictor",
    "mask_roi_pool",
    "mask_head",
    "mask_predictor",
    "box_batch_size_per_image",
)


def build_mask_rcnn(
    backbone: nn.Module,
    num_classes: int,
    img_size: int,
    head_width: int = 256,
    fc_dim: int = 1024,
    norm: str = "bn",
    anchor_sizes: Sequence[Sequence[int]] | None = None,
    rois_per_image: int = 512,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    **maskrcnn_kwargs,
) -> MaskRCNN:
    """Mask R-CNN with the paper's heads around `backbone` (from `build_adaptor` or `build_resnet_fpn_backbone`).

    Args:
        num_classes: K + 1 (background included); targets carry labels 1..K.
        img_size: the fixed square side of every batch (1024 in the paper).
        head_width, fc_dim: channels of the box/mask head convs and of the box head's fc layer.
        norm: norm after the box and mask head convs: "bn" (paper), "syncbn", "gn" or "none".
        anchor_sizes: one tuple of sizes per pyramid level; default: `default_anchor_sizes` (8x each
            level's stride, the paper's 32..512 at patch 16; five sizes on a single-scale level).
        rois_per_image: RoIs sampled per image for the box and mask heads.
        image_mean, image_std: input normalization (ImageNet's by default).
        **maskrcnn_kwargs: other `MaskRCNN` arguments (e.g. `box_detections_per_img`, `rpn_*`).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must count the background too (K + 1 >= 2)")
    for attr in ("out_channels", "featmap_names", "strides"):
        if not hasattr(backbone, attr):
            raise ValueError(
                f"backbone {type(backbone).__name__} lacks {attr!r}: use build_adaptor or build_resnet_fpn_backbone"
            )
    clash = sorted(set(maskrcnn_kwargs) & set(_OWNED))
    if clash:
        raise ValueError(f"build_mask_rcnn sets {clash} itself; use its own arguments instead")
    norm_layer = make_norm_layer(norm)
    levels = [*backbone.featmap_names, *(["pool"] if "pool" in backbone.strides else [])]
    num_levels = len(levels)
    if anchor_sizes is None:
        anchor_sizes = default_anchor_sizes([backbone.strides[name] for name in levels])
    anchor_sizes = tuple(tuple(int(s) for s in level) for level in anchor_sizes)
    if len(anchor_sizes) != num_levels:
        raise ValueError(f"anchor_sizes has {len(anchor_sizes)} levels; the backbone has {num_levels}")
    anchors = AnchorGenerator(anchor_sizes, (ASPECT_RATIOS,) * num_levels)
    C = backbone.out_channels
    canonical_scale = max(1, round(CANONICAL_SCALE * img_size / PAPER_IMG_SIZE))
    model = MaskRCNN(
        backbone,
        num_classes=None,
        min_size=img_size,
        max_size=img_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(C, anchors.num_anchors_per_location()[0], conv_depth=2),
        box_roi_pool=roi_align(backbone, 7, canonical_scale),
        box_head=FastRCNNConvFCHead((C, 7, 7), [head_width] * 4, [fc_dim], norm_layer=norm_layer),
        box_predictor=FastRCNNPredictor(fc_dim, num_classes),
        box_batch_size_per_image=rois_per_image,
        mask_roi_pool=roi_align(backbone, 14, canonical_scale),
        mask_head=MaskRCNNHeads(C, [head_width] * 4, 1, norm_layer=norm_layer),
        mask_predictor=MaskRCNNPredictor(head_width, head_width, num_classes),
        **maskrcnn_kwargs,
    )
    model.transform = FixedSizeTransform(img_size, image_mean, image_std)
    return model


def build_resnet_fpn_backbone(depth: int = 50, norm: str = "bn", out_channels: int = 256) -> BackboneWithFPN:
    """The CNN baseline: a randomly initialized ResNet-50/101 + FPN with `norm` everywhere (no frozen layers)."""
    nets = {50: resnet.resnet50, 101: resnet.resnet101}
    if depth not in nets:
        raise ValueError(f"unknown ResNet depth {depth!r}; allowed: 50, 101")
    if norm == "none":
        raise ValueError("ResNet norm 'none' is not supported; allowed: bn, syncbn, gn")
    norm_layer = make_norm_layer(norm)
    body = nets[depth](weights=None, norm_layer=norm_layer)
    backbone = BackboneWithFPN(
        body,
        {f"layer{i}": str(i - 1) for i in range(1, 5)},
        [256, 512, 1024, 2048],
        out_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=norm_layer,
    )
    backbone.featmap_names = ["0", "1", "2", "3"]
    backbone.strides = {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64}
    return backbone
