"""MAE (He et al. 2021): mask 75% of the patches at random, encode only the visible ones, reconstruct
the normalized pixels of the masked ones with a light decoder.

The encoder is timm's `VisionTransformer`, so its parameter names are MAE's release names; the
position embeddings of encoder and decoder are fixed 2-D sin-cos tables with a zero class slot.
Release layout: `{'model': encoder}` (`save_decoder=True`: encoder + decoder, MAE's "_full" files).

References: facebookresearch/mae models_mae.py, engine_pretrain.py.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block, VisionTransformer
from torchvision.transforms import v2

from studylib.models.pos_embed import get_2d_sincos_pos_embed

from .common import ImageFolder, Task, normalize, normalize_patches, patchify
from .config import PretrainConfig

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def random_masking(x: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random (1 - mask_ratio) of the tokens of each sample, by argsort of uniform noise.

    x: (B, N, C) -> visible (B, N_keep, C); mask (B, N), 0 is keep, 1 is remove; ids_restore (B, N).
    """
    B, N, C = x.shape
    n_keep = int(N * (1 - mask_ratio))
    ids_shuffle = torch.argsort(torch.rand(B, N, device=x.device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    visible = torch.gather(x, 1, ids_shuffle[:, :n_keep, None].expand(-1, -1, C))
    mask = torch.ones(B, N, device=x.device)
    mask[:, :n_keep] = 0
    return visible, torch.gather(mask, 1, ids_restore), ids_restore


def sincos_parameter(dim: int, grid: int, row_first: bool = False) -> nn.Parameter:
    """(1, 1 + grid², dim) fixed sin-cos table with a zero class slot, as a frozen parameter.

    MAE's table encodes the column in its first channel half and the row in the second;
    `row_first=True` swaps the halves, which is MoCo v3's table (its meshgrid runs over (w, h)).
    """
    table = torch.from_numpy(get_2d_sincos_pos_embed(dim, grid, cls_token=True)).unsqueeze(0)
    if row_first:
        table = torch.cat([table[..., dim // 2 :], table[..., : dim // 2]], dim=-1)
    return nn.Parameter(table, requires_grad=False)  # fixed sin-cos embedding


class MaskedAutoencoder(nn.Module):
    """MAE with a timm ViT encoder (`self.encoder`) and a light transformer decoder."""

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        decoder_embed_dim: int,
        decoder_depth: int,
        decoder_num_heads: int,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.patch_size, self.mask_ratio, self.norm_pix_loss = patch_size, mask_ratio, norm_pix_loss
        grid = img_size // patch_size
        self.encoder = VisionTransformer(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            num_classes=0,
            global_pool="token",
            norm_layer=LayerNorm,
            drop_path_rate=drop_path_rate,
        )
        self.encoder.pos_embed = sincos_parameter(embed_dim, grid)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = sincos_parameter(decoder_embed_dim, grid)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * 3)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE's init: xavier-uniform linears (the patch embedding as a linear), normal(0.02) tokens."""
        w = self.encoder.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_encoder(self, images: torch.Tensor, mask_ratio: float):
        enc = self.encoder
        x = enc.patch_embed(images) + enc.pos_embed[:, 1:]
        x, mask, ids_restore = random_masking(x, mask_ratio)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = enc.blocks(torch.cat([cls, x], dim=1))
        return enc.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)
        B, N = ids_restore.shape
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(B, N + 1 - x.shape[1], -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the removed patches only; targets are per-patch normalized pixels."""
        target = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            target = normalize_patches(target)
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, images: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
        latent, mask, ids_restore = self.forward_encoder(images, self.mask_ratio)
        return self.forward_loss(images, self.forward_decoder(latent, ids_restore), mask)

    def release_state_dict(self, with_decoder: bool = False) -> dict[str, torch.Tensor]:
        """Encoder keys with MAE's (timm) names; the decoder's too for the "_full" variant."""
        sd = self.state_dict()
        out = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
        if with_decoder:
            out.update({k: v for k, v in sd.items() if not k.startswith("encoder.")})
        return out


def pretrain_transform(cfg: PretrainConfig) -> v2.Transform:
    """MAE's augmentation: random resized crop and horizontal flip only."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                cfg.img_size,
                scale=(cfg.min_crop_scale, 1.0),
                interpolation=v2.InterpolationMode.BICUBIC,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(),
            normalize(),
        ]
    )


def build(cfg: PretrainConfig, image_dir: str | Path, ann_file: str | Path | None = None) -> Task:
    enc = cfg.encoder_kwargs()
    model = MaskedAutoencoder(
        cfg.img_size,
        enc["patch_size"],
        enc["embed_dim"],
        enc["depth"],
        enc["num_heads"],
        enc["mlp_ratio"],
        cfg.decoder_embed_dim,
        cfg.decoder_depth,
        cfg.decoder_num_heads,
        cfg.mask_ratio,
        cfg.norm_pix_loss,
        cfg.drop_path_rate,
    )
    dataset = ImageFolder(image_dir, pretrain_transform(cfg))

    def release(step: int, optimizer: torch.optim.Optimizer) -> dict:
        return {"model": model.release_state_dict(cfg.save_decoder)}

    return Task(
        model,
        dataset,
        release,
        no_weight_decay=("*cls_token", "*mask_token", "*pos_embed"),
        extra={"mask_ratio": cfg.mask_ratio, "decoder": [cfg.decoder_embed_dim, cfg.decoder_depth]},
    )
