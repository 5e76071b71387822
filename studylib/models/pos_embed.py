"""Positional information for the ViT: pure functions, no state.

- 2-D sin-cos absolute embeddings (as MAE and MoCo v3 use, fixed during pre-training);
- resizing of absolute embeddings from the pre-training grid to the fine-tuning grid (timm);
- BEiT-style relative position bias: the index of a (2h-1)x(2w-1) table for an h x w grid
  (timm's `gen_relative_position_index`) and the bicubic resize of such a table to another grid (timm's).

References: MAE util/pos_embed.py, BEiT modeling_finetune.py, timm layers/pos_embed.py.
"""

from __future__ import annotations

import numpy as np
import torch
from timm.layers import gen_relative_position_index, resample_abs_pos_embed, resize_rel_pos_bias_table_simple


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False) -> np.ndarray:
    """(gh*gw [+1], embed_dim) fixed sin-cos table, rows in row-major (y, x) order.

    The first half of the channels encodes the x (column) coordinate, the second half y, as in
    MAE's `util/pos_embed.py`; a class-token slot, when asked for, is a row of zeros in front.
    """
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    if embed_dim % 4:
        raise ValueError(f"sin-cos embedding needs embed_dim divisible by 4, got {embed_dim}")
    ys, xs = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")
    emb = np.concatenate(
        [_sincos_1d(embed_dim // 2, xs.reshape(-1)), _sincos_1d(embed_dim // 2, ys.reshape(-1))], axis=1
    )
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
    return emb.astype(np.float32)


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def resize_abs_pos_embed(
    pos_embed: torch.Tensor, new_hw: tuple[int, int], num_prefix_tokens: int = 0, old_hw: tuple[int, int] | None = None
) -> torch.Tensor:
    """Resize a (1, [prefix +] gh*gw, C) table to (1, H, W, C), dropping any class-token slot.

    Bicubic (align_corners=False, no antialiasing, as MAE, DeiT and detectron2's `get_abs_pos`),
    through timm's `resample_abs_pos_embed`; the identity when the grid is unchanged.
    """
    n = pos_embed.shape[1] - num_prefix_tokens
    if old_hw is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"position table of {n} tokens is not a square grid; pass old_hw")
        old_hw = (side, side)
    grid = pos_embed[:, num_prefix_tokens:]
    if tuple(old_hw) != tuple(new_hw):
        grid = resample_abs_pos_embed(
            grid, new_size=list(new_hw), old_size=list(old_hw), num_prefix_tokens=0, antialias=False
        )  # timm's default antialias=True uses another cubic kernel
    return grid.reshape(1, new_hw[0], new_hw[1], -1)


def resize_rel_pos_table(table: torch.Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> torch.Tensor:
    """Resize a ((2h-1)*(2w-1), heads) relative-bias table of a square grid to another grid (bicubic over the
    2-D table: timm's `resize_rel_pos_bias_table_simple`, checked first).

    The identity when the grid is unchanged. Extra rows (BEiT's 3 class-token entries) must be
    removed by the caller first.
    """
    oh, ow = 2 * old_hw[0] - 1, 2 * old_hw[1] - 1
    if table.shape[0] != oh * ow:
        raise ValueError(f"relative table has {table.shape[0]} rows, expected {oh}x{ow}={oh * ow} for grid {old_hw}")
    if old_hw[0] != old_hw[1]:
        raise ValueError(f"relative table of grid {old_hw}: only square grids are resized")
    new_rows = (2 * new_hw[0] - 1) * (2 * new_hw[1] - 1)
    return resize_rel_pos_bias_table_simple(table, tuple(new_hw), (new_rows, table.shape[1]))


__all__ = ["gen_relative_position_index", "get_2d_sincos_pos_embed", "resize_abs_pos_embed", "resize_rel_pos_table"]
