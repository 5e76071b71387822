"""Positional helpers: sin-cos table, absolute-table resize, relative index and relative-table resize."""

import math

import pytest
import torch
import torch.nn.functional as F

from studylib.models.pos_embed import (
    gen_relative_position_index,
    get_2d_sincos_pos_embed,
    resize_abs_pos_embed,
    resize_rel_pos_table,
)


# -- 2-D sin-cos ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dim,grid", [(16, 3), (32, (2, 5))])
def test_sincos_matches_the_formula_element_by_element(dim, grid):
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    table = get_2d_sincos_pos_embed(dim, grid)
    assert table.shape == (gh * gw, dim) and table.dtype.name == "float32"
    quarter = dim // 4
    for row, (y, x) in enumerate((y, x) for y in range(gh) for x in range(gw)):
        for i in range(quarter):  # channels: [sin x | cos x | sin y | cos y], frequencies 10000^(-i/quarter)
            w = 10000.0 ** (-i / quarter)
            expected = (math.sin(x * w), math.cos(x * w), math.sin(y * w), math.cos(y * w))
            got = (table[row, i], table[row, quarter + i], table[row, 2 * quarter + i], table[row, 3 * quarter + i])
            assert got == pytest.approx(expected, abs=1e-6), (row, i)


def test_sincos_class_token_slot_is_a_zero_row_in_front():
    with_cls = get_2d_sincos_pos_embed(8, 2, cls_token=True)
    assert with_cls.shape == (5, 8)
    assert (with_cls[0] == 0).all()
    assert (with_cls[1:] == get_2d_sincos_pos_embed(8, 2)).all()


def test_sincos_rejects_dim_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4, got 18"):
        get_2d_sincos_pos_embed(18, 4)


# -- absolute table resize ------------------------------------------------------------------------
def test_resize_abs_is_exact_for_an_unchanged_grid_and_drops_the_class_slot():
    pos = torch.randn(1, 1 + 3 * 4, 8)
    out = resize_abs_pos_embed(pos, (3, 4), num_prefix_tokens=1, old_hw=(3, 4))
    assert out.shape == (1, 3, 4, 8)
    assert torch.equal(out.reshape(1, 12, 8), pos[:, 1:])


def test_resize_abs_is_bicubic_otherwise():
    """Plain bicubic as MAE / DeiT / detectron2 resize (not the antialiased kernel timm uses by default)."""
    pos = torch.randn(1, 1 + 4 * 4, 6)
    out = resize_abs_pos_embed(pos, (7, 9), num_prefix_tokens=1)
    grid = pos[:, 1:].reshape(1, 4, 4, 6).permute(0, 3, 1, 2)
    bicubic = F.interpolate(grid, size=(7, 9), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    bilinear = F.interpolate(grid, size=(7, 9), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    antialiased = F.interpolate(grid, size=(7, 9), mode="bicubic", antialias=True).permute(0, 2, 3, 1)
    assert out.shape == (1, 7, 9, 6)
    torch.testing.assert_close(out, bicubic, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, bilinear, atol=1e-3) and not torch.allclose(out, antialiased, atol=1e-3)
    # a constant table stays constant (bicubic weights sum to one)
    const = resize_abs_pos_embed(torch.full((1, 16, 2), 0.5), (10, 10))
    torch.testing.assert_close(const, torch.full_like(const, 0.5))


def test_resize_abs_gradient_reaches_the_stored_table():
    pos = torch.randn(1, 17, 4, requires_grad=True)
    resize_abs_pos_embed(pos, (6, 6), num_prefix_tokens=1).sum().backward()
    assert pos.grad is not None and (pos.grad[:, 0] == 0).all() and pos.grad[:, 1:].abs().sum() > 0


def test_resize_abs_non_square_table_needs_old_hw():
    with pytest.raises(ValueError, match="12 tokens is not a square grid"):
        resize_abs_pos_embed(torch.randn(1, 12, 4), (4, 4))


# -- relative position index and table resize ------------------------------------------------------
@pytest.mark.parametrize("h,w", [(3, 3), (2, 4)])
def test_relative_position_index_matches_offsets(h, w):
    index = gen_relative_position_index((h, w))
    assert index.shape == (h * w, h * w) and index.dtype == torch.long
    pos = [(y, x) for y in range(h) for x in range(w)]
    for i, (yi, xi) in enumerate(pos):
        for j, (yj, xj) in enumerate(pos):
            assert index[i, j] == (yi - yj + h - 1) * (2 * w - 1) + (xi - xj + w - 1)
    assert set(index.unique().tolist()) == set(range((2 * h - 1) * (2 * w - 1)))  # every offset used


def test_resize_rel_table_is_the_identity_for_an_unchanged_grid():
    table = torch.randn(5 * 5, 3)
    assert torch.equal(resize_rel_pos_table(table, (3, 3), (3, 3)), table)


def test_resize_rel_table_is_bicubic_and_keeps_the_zero_offset():
    heads = 2
    table = torch.randn(7 * 7, heads)  # grid 4x4
    out = resize_rel_pos_table(table, (4, 4), (6, 5))
    assert out.shape == (11 * 9, heads)
    grid = table.t().reshape(1, heads, 7, 7)
    expected = F.interpolate(grid, size=(11, 9), mode="bicubic", align_corners=False).reshape(heads, -1).t()
    torch.testing.assert_close(out, expected)
    # offset (0, 0) sits at the centre of both tables, on a sample point: bicubic keeps it exactly
    centre_old, centre_new = 3 * 7 + 3, 5 * 9 + 4
    torch.testing.assert_close(out[centre_new], table[centre_old])


def test_resize_rel_table_rejects_a_wrong_row_count():
    with pytest.raises(ValueError, match=r"has 52 rows, expected 7x7=49 for grid \(4, 4\)"):
        resize_rel_pos_table(torch.randn(49 + 3, 2), (4, 4), (5, 5))
