"""The multi-scale adaptor: a plain ViT's block outputs -> an FPN pyramid for Mask R-CNN.

Three kinds (`build_adaptor(vit, kind=...)`):

* ``"multiscale"`` (the paper, §2.1, after XCiT): the outputs of the blocks at each d/4 interval
  are rescaled x4 (2x2 stride-2 deconv -> GroupNorm -> GELU -> 2x2 stride-2 deconv), x2 (one deconv),
  x1 (identity) and x0.5 (2x2 max-pool), keeping the ViT width, then go through a standard FPN
  (top-down path, `LastLevelMaxPool` for the extra 'pool' level).
* ``"single"`` (the paper's Table 2 ablation): only the last block's map at stride p (16 at patch 16);
  an FPN with one level and no extra level, so RPN and RoIAlign both run on it.
* ``"simple"`` (beyond the paper: ViTDet's simple feature pyramid): the four scales are built from the
  last map alone, channels halved per deconv, each level projected by 1x1 + 3x3 convs, no top-down path.

Every adaptor meets torchvision's backbone contract (`out_channels`, `forward(images) -> OrderedDict`)
and adds `featmap_names` (the levels for RoIAlign), `strides` (name -> stride in pixels) and `vit`.
Strides are p/4, p/2, p, 2p (+4p for 'pool'): 4, 8, 16, 32, 64 at the paper's patch size 16.

Norms: "bn" (the paper's SyncBN; the trainer converts with `nn.SyncBatchNorm.convert_sync_batchnorm`
when distributed), "syncbn" (built directly), "gn" (GroupNorm, see `num_groups`) or "none".

References: Li et al. 2021 §2.1; XCiT; detectron2 modeling/backbone/vit.py (SimpleFeaturePyramid);
torchvision ops/feature_pyramid_network.py.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import Conv2dNormActivation

from .vit import ViT

KINDS = ("multiscale", "single", "simple")
NORMS = ("bn", "syncbn", "gn", "none")


def num_groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups: 32 when `channels` is divisible by 32, else the largest divisor of it below 32.

    The paper does not state the count; 32 is the GroupNorm paper's default (and MIMDet's choice).
    """
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm over `channels` with `num_groups(channels)` groups."""
    return nn.GroupNorm(num_groups(channels), channels)


def make_norm_layer(norm: str) -> Callable[[int], nn.Module] | None:
    """norm name -> a `channels -> module` factory (None for "none"), as torchvision's `norm_layer`."""
    layers = {"bn": nn.BatchNorm2d, "syncbn": nn.SyncBatchNorm, "gn": group_norm, "none": None}
    if norm not in layers:
        raise ValueError(f"unknown norm {norm!r}; allowed: {', '.join(NORMS)}")
    return layers[norm]


def _deconv(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)


class MultiScaleAdaptor(nn.Module):
    """The paper's adaptor: x4 / x2 / x1 / x0.5 on the four d/4 block outputs, then an FPN."""

    def __init__(self, vit: ViT, out_channels: int = 256, norm: str = "bn"):
        super().__init__()
        C, p = vit.embed_dim, vit.patch_size
        if len(vit.out_indices) != 4:
            raise ValueError(f"the multi-scale adaptor needs 4 ViT outputs, got out_indices={vit.out_indices}")
        self.vit = vit
        self.scale4 = nn.Sequential(_deconv(C, C), group_norm(C), nn.GELU(), _deconv(C, C))
        self.scale2 = _deconv(C, C)  # "without normalization and non-linearity"
        self.scale1 = nn.Identity()
        self.scale05 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.fpn = FeaturePyramidNetwork(
            [C] * 4, out_channels, extra_blocks=LastLevelMaxPool(), norm_layer=make_norm_layer(norm)
        )
        self.out_channels = out_channels
        self.featmap_names = ["0", "1", "2", "3"]
        self.strides = {"0": p // 4, "1": p // 2, "2": p, "3": 2 * p, "pool": 4 * p}

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = self.vit(images)
        scales = (self.scale4, self.scale2, self.scale1, self.scale05)
        return self.fpn(OrderedDict((str(i), m(x)) for i, (m, x) in enumerate(zip(scales, maps))))


class SingleScaleAdaptor(nn.Module):
    """The single-scale ablation: the last block's stride-p map through a one-level FPN."""

    def __init__(self, vit: ViT, out_channels: int = 256, norm: str = "bn"):
        super().__init__()
        self.vit = vit
        self.fpn = FeaturePyramidNetwork(
            [vit.embed_dim], out_channels, extra_blocks=None, norm_layer=make_norm_layer(norm)
        )
        self.out_channels = out_channels
        self.featmap_names = ["0"]
        self.strides = {"0": vit.patch_size}

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.vit.forward_features(images).permute(0, 3, 1, 2)
        return self.fpn(OrderedDict([("0", x)]))


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid from the last map (LayerNorm inside x4, `norm` after each conv)."""

    def __init__(self, vit: ViT, out_channels: int = 256, norm: str = "bn"):
        super().__init__()
        C, p = vit.embed_dim, vit.patch_size
        if C % 4:
            raise ValueError(f"the simple feature pyramid needs embed_dim divisible by 4, got {C}")
        norm_layer = make_norm_layer(norm)
        self.vit = vit
        self.scales = nn.ModuleList(
            [
                nn.Sequential(_deconv(C, C // 2), LayerNorm2d(C // 2), nn.GELU(), _deconv(C // 2, C // 4)),
                _deconv(C, C // 2),
                nn.Identity(),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ]
        )
        self.lateral = nn.ModuleList(
            nn.Sequential(
                Conv2dNormActivation(c, out_channels, kernel_size=1, norm_layer=norm_layer, activation_layer=None),
                Conv2dNormActivation(
                    out_channels, out_channels, kernel_size=3, norm_layer=norm_layer, activation_layer=None
                ),
            )
            for c in (C // 4, C // 2, C, C)
        )
        self.top_block = LastLevelMaxPool()
        self.out_channels = out_channels
        self.featmap_names = ["0", "1", "2", "3"]
        self.strides = {"0": p // 4, "1": p // 2, "2": p, "3": 2 * p, "pool": 4 * p}

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.vit.forward_features(images).permute(0, 3, 1, 2)
        outs = [lat(scale(x)) for scale, lat in zip(self.scales, self.lateral)]
        outs, names = self.top_block(outs, [], list(self.featmap_names))
        return OrderedDict(zip(names, outs))


def build_adaptor(vit: ViT, kind: str = "multiscale", out_channels: int = 256, norm: str = "bn") -> nn.Module:
    """Wrap `vit` into a torchvision detection backbone: 'multiscale' (the paper), 'single', or 'simple'."""
    adaptors = {"multiscale": MultiScaleAdaptor, "single": SingleScaleAdaptor, "simple": SimpleFeaturePyramid}
    if kind not in adaptors:
        raise ValueError(f"unknown adaptor kind {kind!r}; allowed: {', '.join(KINDS)}")
    make_norm_layer(norm)  # validate before building anything
    if out_channels < 1:
        raise ValueError(f"out_channels={out_channels} must be positive")
    if kind != "single" and vit.patch_size % 4:
        raise ValueError(f"adaptor {kind!r} upsamples x4: patch_size={vit.patch_size} must be divisible by 4")
    return adaptors[kind](vit, out_channels, norm)
