"""MoCo v3 (Chen, Xie, He 2021): two augmented views, a base encoder with projection and prediction
MLPs, a momentum encoder (projection only) updated by EMA with a cosine momentum schedule, and a
symmetric InfoNCE loss with temperature.

Both encoders are timm `VisionTransformer`s whose `head` is the 3-layer projector, with fixed 2-D
sin-cos position embeddings and, as in the original's `--stop-grad-conv1`, a frozen random patch
embedding. With one process, the keys of the contrastive loss are the batch itself (no all-gather).
Release layout (main_moco.py): {'epoch', 'arch', 'state_dict': {'module.base_encoder.*',
'module.momentum_encoder.*', 'module.predictor.*'}, 'optimizer'}.

References: facebookresearch/moco-v3 moco/builder.py, vits.py, main_moco.py.
"""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models._manipulate import named_apply
from timm.models.vision_transformer import VisionTransformer, init_weights_vit_moco
from torchvision.transforms import v2

from .common import ImageFolder, Task, epochs_done, normalize
from .config import PretrainConfig
from .mae import sincos_parameter


def build_mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int, last_bn: bool = True) -> nn.Sequential:
    """MoCo v3's MLP: Linear (no bias) + BN + ReLU per hidden layer, a last BN without affine."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d_in = input_dim if i == 0 else mlp_dim
        last = i == num_layers - 1
        d_out = output_dim if last else mlp_dim
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if not last:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


def momentum_at(progress: float, base_m: float) -> float:
    """Cosine momentum schedule from `base_m` (progress 0) to 1 (progress 1)."""
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - base_m)


def moco_vit(
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float,
    stop_grad_conv1: bool,
    drop_path_rate: float = 0.0,
) -> VisionTransformer:
    """MoCo v3's ViT: timm's MoCo init, fixed sin-cos pos_embed, optionally frozen random patch embedding."""
    vit = VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=True,
        num_classes=0,
        global_pool="token",
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_path_rate=drop_path_rate,
        weight_init="skip",
    )
    named_apply(init_weights_vit_moco, vit)
    nn.init.normal_(vit.cls_token, std=1e-6)
    vit.pos_embed = sincos_parameter(embed_dim, img_size // patch_size, row_first=True)  # MoCo v3's order
    # patch embedding: uniform init treating the conv as a linear layer (vits.py), then frozen
    w = vit.patch_embed.proj.weight
    val = math.sqrt(6.0 / float(3 * patch_size * patch_size + embed_dim))
    nn.init.uniform_(w, -val, val)
    nn.init.zeros_(vit.patch_embed.proj.bias)
    if stop_grad_conv1:
        vit.patch_embed.proj.weight.requires_grad = False
        vit.patch_embed.proj.bias.requires_grad = False
    return vit


class MoCoV3(nn.Module):
    """Base encoder (+ projector head), momentum encoder, predictor; `forward((x1, x2), progress)` -> loss."""

    def __init__(
        self, encoder: VisionTransformer, dim: int = 256, mlp_dim: int = 4096, T: float = 0.2, base_m: float = 0.99
    ):
        super().__init__()
        self.T, self.base_m = T, base_m
        hidden = encoder.embed_dim
        encoder.head = build_mlp(3, hidden, mlp_dim, dim)
        self.base_encoder = encoder
        self.momentum_encoder = copy.deepcopy(encoder)
        for p in self.momentum_encoder.parameters():
            p.requires_grad = False  # updated by EMA only
        self.predictor = build_mlp(2, dim, mlp_dim, dim)

    @torch.no_grad()
    def update_momentum_encoder(self, m: float) -> None:
        for pb, pm in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            pm.mul_(m).add_(pb.detach(), alpha=1.0 - m)

    def contrastive_loss(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """InfoNCE: the positive of q[i] is k[i], the negatives the other keys of the batch."""
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        logits = q @ k.t() / self.T
        labels = torch.arange(q.shape[0], device=q.device)
        return F.cross_entropy(logits, labels) * (2 * self.T)

    def forward(self, views: tuple[torch.Tensor, torch.Tensor], progress: float = 0.0) -> torch.Tensor:
        x1, x2 = views
        q1 = self.predictor(self.base_encoder(x1))
        q2 = self.predictor(self.base_encoder(x2))
        with torch.no_grad():
            self.update_momentum_encoder(momentum_at(progress, self.base_m))
            k1, k2 = self.momentum_encoder(x1), self.momentum_encoder(x2)
        return self.contrastive_loss(q1, k2) + self.contrastive_loss(q2, k1)


class TwoViews:
    """Two independent draws of the same augmentation (MoCo v3 uses two slightly different ones)."""

    def __init__(self, first: v2.Transform, second: v2.Transform):
        self.first, self.second = first, second

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.first(image), self.second(image)


def pretrain_transform(cfg: PretrainConfig) -> TwoViews:
    """BYOL-style views as in MoCo v3: crop, color jitter, grayscale, blur (1.0 / 0.1), solarize (0 / 0.2)."""
    blur_kernel = max(3, cfg.img_size // 10 * 2 + 1)  # ~10% of the side, odd

    def view(blur_p: float, solarize_p: float) -> v2.Transform:
        return v2.Compose(
            [
                v2.RandomResizedCrop(cfg.img_size, scale=(cfg.min_crop_scale, 1.0), antialias=True),
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                v2.RandomGrayscale(p=0.2),
                v2.RandomApply([v2.GaussianBlur(blur_kernel, sigma=(0.1, 2.0))], p=blur_p),
                v2.RandomSolarize(threshold=128, p=solarize_p),
                v2.RandomHorizontalFlip(),
                normalize(),
            ]
        )

    return TwoViews(view(1.0, 0.0), view(0.1, 0.2))


def build(cfg: PretrainConfig, image_dir: str | Path, ann_file: str | Path | None = None) -> Task:
    enc = cfg.encoder_kwargs()
    vit = moco_vit(
        cfg.img_size,
        enc["patch_size"],
        enc["embed_dim"],
        enc["depth"],
        enc["num_heads"],
        enc["mlp_ratio"],
        cfg.stop_grad_conv1,
        cfg.drop_path_rate,
    )
    model = MoCoV3(vit, cfg.moco_dim, cfg.moco_mlp_dim, cfg.moco_t, cfg.moco_m)
    dataset = ImageFolder(image_dir, pretrain_transform(cfg))

    def release(step: int, optimizer: torch.optim.Optimizer) -> dict:
        return {
            "epoch": epochs_done(cfg, step, len(dataset)),
            "arch": cfg.backbone,
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
        }

    return Task(
        model,
        dataset,
        release,
        no_weight_decay=("*cls_token", "*pos_embed"),
        extra={"moco_t": cfg.moco_t, "moco_m": cfg.moco_m, "stop_grad_conv1": cfg.stop_grad_conv1},
    )
