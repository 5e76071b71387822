"""The plain ViT backbone for detection; its constructor arguments are the paper's ablation axes.

One class, `ViT`: patch embedding, pre-norm blocks (MLP ratio 4), windowed or global attention
chosen per block (`global_blocks`), optional absolute position embedding stored at the
pre-training grid and resized in forward, optional BEiT-style relative position bias with one
table shared by all windowed blocks and one shared by all global blocks (as the paper does),
optional layer scale, drop path and per-block activation checkpointing.

Parameter names follow timm's `VisionTransformer` (`patch_embed.proj`, `blocks.i.attn.qkv`,
`blocks.i.mlp.fc1`, `blocks.i.ls1.gamma`, ...) so that official checkpoints map onto it with
few renames. Disabled parts are `None` or `nn.Identity`.

References: detectron2 modeling/backbone/vit.py, timm vision_transformer(_sam).py, BEiT.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, LayerScale, Mlp, PatchEmbed, trunc_normal_

from .pos_embed import gen_relative_position_index, resize_abs_pos_embed, resize_rel_pos_table

# name -> constructor keywords. Global blocks default to each d/4-th block (the paper's hybrid).
PRESETS: dict[str, dict] = {
    # embedded default: small enough to pre-train and fine-tune on 2 CPU cores
    "vit_micro": dict(embed_dim=128, depth=8, num_heads=4, patch_size=8, pretrain_img_size=64, img_size=128),
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16),
}


def default_global_blocks(depth: int) -> tuple[int, ...]:
    """The paper's hybrid: global attention in the last block of each d/4 subset (B: 2,5,8,11)."""
    return tuple(depth // 4 * (i + 1) - 1 for i in range(4))


def window_partition(x: torch.Tensor, r: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B*nW, r*r, C) windows, zero-padding H, W up to multiples of r; also the padded size."""
    B, H, W, C = x.shape
    ph, pw = (r - H % r) % r, (r - W % r) % r
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    Hp, Wp = H + ph, W + pw
    windows = x.view(B, Hp // r, r, Wp // r, r, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, r * r, C)
    return windows, (Hp, Wp)


def window_unpartition(windows: torch.Tensor, r: int, padded_hw: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of `window_partition`: (B*nW, r*r, C) -> (B, H, W, C), padding removed."""
    Hp, Wp = padded_hw
    H, W = hw
    C = windows.shape[-1]
    B = windows.shape[0] // (Hp // r * Wp // r)
    x = windows.view(B, Hp // r, Wp // r, r, r, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
    return x[:, :H, :W].contiguous()


def window_attn_mask(
    hw: tuple[int, int],
    r: int,
    batch: int,
    rel_bias: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor | None:
    """The additive attention mask of windowed blocks on an h x w grid, or None when there is nothing to add.

    The (heads, r*r, r*r) relative bias, if any, plus -inf on the keys that are padding, so that
    padding never reaches a real token: (1, heads, r*r, r*r) without padding, otherwise
    (B*nW, heads or 1, r*r or 1, r*r). Built once per forward and shared by all windowed blocks.
    """
    H, W = hw
    mask = rel_bias[None].to(dtype) if rel_bias is not None else None
    if H % r or W % r:
        device = rel_bias.device if rel_bias is not None else device
        valid = torch.ones(batch, H, W, 1, dtype=dtype, device=device)
        pad = window_partition(valid, r)[0].squeeze(-1)  # (B*nW, r*r): 1 real, 0 padding
        pad = torch.zeros_like(pad).masked_fill_(pad == 0, float("-inf"))[:, None, None, :]
        mask = pad if mask is None else mask + pad
    return mask


class RelPosBias(nn.Module):
    """A learned BEiT-style relative position bias table for an h x w token grid.

    `forward(hw)` returns the (heads, N, N) bias for a grid of that size; a grid other than the
    table's own resizes the table (bicubic) on the fly.
    """

    def __init__(self, grid: tuple[int, int], num_heads: int):
        super().__init__()
        self.grid = tuple(grid)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * grid[0] - 1) * (2 * grid[1] - 1), num_heads))
        self.register_buffer("relative_position_index", gen_relative_position_index(tuple(grid)), persistent=False)

    def forward(self, hw: tuple[int, int]) -> torch.Tensor:
        table, index = self.relative_position_bias_table, self.relative_position_index
        if tuple(hw) != self.grid:
            table = resize_rel_pos_table(table, self.grid, hw)
            index = gen_relative_position_index(tuple(hw)).to(table.device)
        n = hw[0] * hw[1]
        return table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()


class Attention(nn.Module):
    """Multi-head self-attention over (B, N, C) tokens with an optional additive bias/mask."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block; `window_size` 0 means global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        layer_scale_init: float | None = None,
    ):
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, H, W, C). attn_mask: additive mask of the attention, or None for none.

        Global blocks take (1, heads, N, N) (the relative bias); windowed blocks take the mask of
        `window_attn_mask` for this grid, which also masks padding (None: padding only).
        """
        B, H, W, C = x.shape
        h = self.norm1(x)
        if self.window_size:
            r = self.window_size
            if attn_mask is None:
                attn_mask = window_attn_mask((H, W), r, B, dtype=h.dtype, device=h.device)
            elif (H % r or W % r) and attn_mask.shape[0] != B * -(-H // r) * -(-W // r):
                raise ValueError(
                    f"windowed block on a {H}x{W} grid (r={r}) needs the padding mask of "
                    f"window_attn_mask, got a mask of shape {tuple(attn_mask.shape)}"
                )
            h, padded = window_partition(h, r)
            h = window_unpartition(self.attn(h, attn_mask), r, padded, (H, W))
        else:
            h = self.attn(h.reshape(B, H * W, C), attn_mask).view(B, H, W, C)
        x = x + self.drop_path(self.ls1(h))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class ViT(nn.Module):
    """A plain ViT for detection whose arguments are the ablation axes of Li et al. (2021).

    Args:
        img_size: fine-tuning input side (the padded square); sets the global relative-bias grid.
        patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the usual ViT.
        window_size: side r of the non-overlapping windows of windowed blocks (the pre-training grid).
        global_blocks: indices of blocks with global attention (all others are windowed).
            None gives the paper's hybrid, one global block at each d/4-th block.
        use_abs_pos: absolute position embedding, stored at the pre-training grid, resized in forward.
        use_rel_pos: relative position bias, one table shared by windowed and one by global blocks.
        layer_scale_init: layer scale initial value (BEiT); None = no layer scale.
        drop_path_rate: stochastic depth, increasing linearly over the blocks up to this value.
        pretrain_img_size: image side of pre-training; the grid of the absolute embedding.
        pretrain_use_cls_token: the stored absolute table has a class-token slot (dropped in forward).
        use_checkpoint: activation checkpointing of every block in training.
        out_indices: blocks whose outputs `forward` returns (default: the end of each d/4 subset).
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        window_size: int = 14,
        global_blocks: Sequence[int] | None = None,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        layer_scale_init: float | None = None,
        drop_path_rate: float = 0.0,
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
        use_checkpoint: bool = False,
        out_indices: Sequence[int] | None = None,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        if depth < 4:
            raise ValueError(f"depth={depth}: the multi-scale adaptor needs at least 4 blocks")
        for name, size in (("img_size", img_size), ("pretrain_img_size", pretrain_img_size)):
            if size % patch_size:
                raise ValueError(f"{name}={size} is not a multiple of patch_size={patch_size}")
        if window_size < 0:
            raise ValueError(f"window_size={window_size} must be >= 1 (or 0 for global attention everywhere)")
        global_blocks = default_global_blocks(depth) if global_blocks is None else tuple(sorted(set(global_blocks)))
        bad = [i for i in global_blocks if not 0 <= i < depth]
        if bad:
            raise ValueError(f"global_blocks {bad} out of range: allowed 0..{depth - 1}")
        if window_size == 0:
            global_blocks = tuple(range(depth))
        self.out_indices = tuple(out_indices) if out_indices is not None else default_global_blocks(depth)
        if any(not 0 <= i < depth for i in self.out_indices):
            raise ValueError(f"out_indices {self.out_indices} out of range 0..{depth - 1}")

        self.patch_size, self.embed_dim, self.depth, self.num_heads = patch_size, embed_dim, depth, num_heads
        self.window_size, self.global_blocks = window_size, global_blocks
        self.img_size, self.pretrain_img_size = img_size, pretrain_img_size
        self.use_checkpoint = use_checkpoint
        self.pretrain_grid = (pretrain_img_size // patch_size,) * 2
        self.grid = (img_size // patch_size,) * 2
        self.num_prefix_tokens = 1 if pretrain_use_cls_token else 0

        self.patch_embed = PatchEmbed(
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            img_size=None,
            output_fmt="NHWC",
            strict_img_size=False,
        )
        n_pos = self.pretrain_grid[0] * self.pretrain_grid[1] + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, embed_dim)) if use_abs_pos else None
        windowed = [i for i in range(depth) if i not in global_blocks]
        self.rel_pos_window = RelPosBias((window_size,) * 2, num_heads) if use_rel_pos and windowed else None
        self.rel_pos_global = RelPosBias(self.grid, num_heads) if use_rel_pos and global_blocks else None
        dpr = [drop_path_rate * i / (depth - 1) for i in range(depth)]  # linear 0 -> rate (no tensor: meta-safe)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                0 if i in global_blocks else window_size,
                mlp_ratio,
                qkv_bias,
                dpr[i],
                layer_scale_init,
            )
            for i in range(depth)
        )
        self.init_weights()

    # -- initialization ----------------------------------------------------------------------------
    def init_weights(self) -> None:
        """The paper's random initialization (BEiT's): trunc-normal 0.02, output projections rescaled by depth."""
        self.apply(_init_module)
        for i, blk in enumerate(self.blocks):
            blk.attn.proj.weight.data.div_(math.sqrt(2.0 * (i + 1)))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * (i + 1)))
        self.reset_positional(abs_pos="rand", rel_pos="zero")

    def reset_positional(self, abs_pos: str | None = None, rel_pos: str | None = None) -> None:
        """Re-initialize positional parameters: 'rand' (trunc-normal 0.02) or 'zero'; None leaves them."""
        for mode, params in (
            (abs_pos, [self.pos_embed]),
            (
                rel_pos,
                [m.relative_position_bias_table for m in (self.rel_pos_window, self.rel_pos_global) if m is not None],
            ),
        ):
            if mode is None:
                continue
            if mode not in ("rand", "zero"):
                raise ValueError(f"positional init {mode!r}: allowed 'rand' or 'zero'")
            for p in params:
                if p is None:
                    continue
                if mode == "rand":
                    trunc_normal_(p, std=0.02)
                else:
                    nn.init.zeros_(p)

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides norms and biases."""
        return {
            "pos_embed",
            "rel_pos_window.relative_position_bias_table",
            "rel_pos_global.relative_position_bias_table",
        }

    # -- forward -----------------------------------------------------------------------------------
    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}x{W} is not a multiple of patch_size={self.patch_size}")
        x = self.patch_embed(images)  # B, h, w, C
        if self.pos_embed is not None:
            x = x + resize_abs_pos_embed(self.pos_embed, x.shape[1:3], self.num_prefix_tokens, self.pretrain_grid)
        return x

    def _blocks(self, x: torch.Tensor):
        B, H, W = x.shape[:3]
        # masks are built once per forward in the compute dtype, so every block shares one copy
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        mask_w = mask_g = None
        if len(self.global_blocks) < self.depth:
            bias = self.rel_pos_window((self.window_size,) * 2) if self.rel_pos_window is not None else None
            mask_w = window_attn_mask((H, W), self.window_size, B, bias, dtype, x.device)
        if self.rel_pos_global is not None:
            mask_g = self.rel_pos_global((H, W))[None].to(dtype)
        for i, blk in enumerate(self.blocks):
            mask = mask_w if blk.window_size else mask_g
            if self.use_checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, mask, use_reentrant=False)
            else:
                x = blk(x, mask)
            yield i, x

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/p, W/p, C): the last block's output (there is no final norm)."""
        out = self._embed(images)
        for _, feature in self._blocks(out):
            out = feature
        return out

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> the outputs of the blocks in `out_indices`, each (B, C, H/p, W/p)."""
        outs = []
        for i, x in self._blocks(self._embed(images)):
            if i in self.out_indices:
                outs.append(x.permute(0, 3, 1, 2).contiguous())
            if i == self.out_indices[-1]:
                break
        return outs


def _init_module(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):  # patch embedding, as a linear layer (MAE/BEiT)
        trunc_normal_(m.weight.view(m.weight.shape[0], -1), std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_backbone(name: str, **overrides) -> ViT:
    """The `ViT` of a preset (see `PRESETS`), with constructor keywords overriding the preset's."""
    if name not in PRESETS:
        raise ValueError(f"unknown backbone preset {name!r}; allowed: {', '.join(PRESETS)}")
    kwargs = {**PRESETS[name], **overrides}
    if "window_size" not in kwargs:  # windows of the pre-training grid (14 for 224/16)
        kwargs["window_size"] = kwargs.get("pretrain_img_size", 224) // kwargs.get("patch_size", 16)
    try:
        return ViT(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad override for backbone {name!r}: {e}") from None
