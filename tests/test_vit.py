"""The ViT backbone: attention strategies, padding, positional options, init, layer scale, drop path, errors."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from studylib.models.pos_embed import resize_abs_pos_embed
from studylib.models.vit import (
    PRESETS,
    Block,
    RelPosBias,
    ViT,
    build_backbone,
    default_global_blocks,
    window_attn_mask,
    window_partition,
    window_unpartition,
)

# a 5x5 token grid with 3x3 windows: every windowed block pads 5 -> 6
TINY = dict(img_size=20, patch_size=4, embed_dim=32, depth=8, num_heads=2, window_size=3, pretrain_img_size=12)
ATTENTION = {"window": dict(global_blocks=()), "hybrid": dict(global_blocks=None), "global": dict(window_size=0)}


def tiny(**overrides) -> ViT:
    torch.manual_seed(0)
    return ViT(**{**TINY, **overrides})


def randomize_rel_tables(vit: ViT) -> None:
    for m in (vit.rel_pos_window, vit.rel_pos_global):
        if m is not None:
            torch.nn.init.normal_(m.relative_position_bias_table, std=0.5)


# -- every combination builds, runs and trains -----------------------------------------------------
@pytest.mark.parametrize("use_rel_pos", [False, True])
@pytest.mark.parametrize("use_abs_pos", [False, True])
@pytest.mark.parametrize("attention", list(ATTENTION))
def test_every_combination_runs_forward_backward_and_every_parameter_gets_a_gradient(
    attention, use_abs_pos, use_rel_pos
):
    vit = tiny(use_abs_pos=use_abs_pos, use_rel_pos=use_rel_pos, **ATTENTION[attention])
    expected_global = {"window": (), "hybrid": (1, 3, 5, 7), "global": tuple(range(8))}[attention]
    assert vit.global_blocks == expected_global
    assert [b.window_size for b in vit.blocks] == [0 if i in expected_global else 3 for i in range(8)]
    assert (vit.pos_embed is not None) == use_abs_pos
    assert (vit.rel_pos_window is not None) == (use_rel_pos and attention != "global")
    assert (vit.rel_pos_global is not None) == (use_rel_pos and attention != "window")
    randomize_rel_tables(vit)
    outs = vit(torch.randn(2, 3, 20, 20))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 5, 5)] * 4
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    missing = [n for n, p in vit.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


def test_masks_are_built_once_in_the_autocast_dtype_and_shared_by_the_blocks():
    vit = tiny(use_rel_pos=True)  # hybrid on a padded grid: a window mask (bias + padding) and a global bias
    randomize_rel_tables(vit)
    seen = []
    for blk in vit.blocks:
        blk.attn.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    x = torch.randn(1, 3, 20, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vit.forward_features(x)
    assert all(m.dtype == torch.bfloat16 for m in seen)
    windowed, glob = seen[0::2], seen[1::2]  # global blocks are 1, 3, 5, 7
    assert all(m is windowed[0] for m in windowed) and all(m is glob[0] for m in glob)
    assert windowed[0].shape == (4, 2, 9, 9) and glob[0].shape == (1, 2, 25, 25)
    torch.testing.assert_close(out, vit.forward_features(x), atol=0.1, rtol=0.05)
    out.sum().backward()
    assert vit.rel_pos_window.relative_position_bias_table.grad.abs().sum() > 0


def test_hybrid_has_both_relative_tables_with_their_own_grids():
    vit = tiny(use_rel_pos=True)  # hybrid: global blocks 1, 3, 5, 7
    assert vit.global_blocks == (1, 3, 5, 7)
    assert vit.rel_pos_window.relative_position_bias_table.shape == (5 * 5, 2)  # (2r-1)^2, r = 3
    assert vit.rel_pos_global.relative_position_bias_table.shape == (9 * 9, 2)  # (2G-1)^2, G = 20/4
    names = {n for n, _ in vit.named_parameters()}
    assert {"rel_pos_window.relative_position_bias_table", "rel_pos_global.relative_position_bias_table"} <= names
    assert not any("blocks." in n and "relative_position" in n for n in names)  # shared, not per block


# -- windows -----------------------------------------------------------------------------------------
def test_window_partition_with_padding_round_trips_and_orders_tokens():
    x = torch.randn(2, 5, 7, 3)
    windows, padded = window_partition(x, 3)
    assert padded == (6, 9) and windows.shape == (2 * 2 * 3, 9, 3)
    for b in range(2):
        for wi in range(2):
            for wj in range(3):
                w = (b * 2 + wi) * 3 + wj
                for t in range(9):
                    y, xx = wi * 3 + t // 3, wj * 3 + t % 3
                    expected = x[b, y, xx] if y < 5 and xx < 7 else torch.zeros(3)
                    assert torch.equal(windows[w, t], expected)
    assert torch.equal(window_unpartition(windows, 3, padded, (5, 7)), x)


def test_window_partition_without_padding_round_trips():
    x = torch.randn(1, 6, 6, 4)
    windows, padded = window_partition(x, 3)
    assert padded == (6, 6) and windows.shape == (4, 9, 4)
    assert torch.equal(window_unpartition(windows, 3, padded, (6, 6)), x)


def test_window_attn_mask_masks_exactly_the_padded_keys():
    assert window_attn_mask((6, 6), 3, batch=2) is None  # no padding, no bias: nothing to add
    bias = torch.randn(2, 9, 9)
    torch.testing.assert_close(window_attn_mask((6, 6), 3, 2, bias), bias[None])
    mask = window_attn_mask((5, 7), 3, 2, bias)
    assert mask.shape == (2 * 2 * 3, 2, 9, 9)
    windows, _ = window_partition(torch.ones(2, 5, 7, 1), 3)  # 1 on real tokens, 0 on padding
    real = windows[..., 0].bool()
    for w in range(12):
        assert torch.isneginf(mask[w][:, :, ~real[w]]).all()
        torch.testing.assert_close(mask[w][:, :, real[w]], bias[:, :, real[w]])
    only_pad = window_attn_mask((5, 7), 3, 2, dtype=torch.bfloat16)
    assert only_pad.shape == (12, 1, 1, 9) and only_pad.dtype == torch.bfloat16


def test_windowed_block_rejects_a_mask_without_padding_on_a_padded_grid():
    blk = Block(16, 2, window_size=3)
    with pytest.raises(ValueError, match=r"5x7 grid \(r=3\) needs the padding mask of window_attn_mask"):
        blk(torch.randn(1, 5, 7, 16), torch.zeros(1, 2, 9, 9))


def reference_windowed_block(blk: Block, x: torch.Tensor, table: torch.Tensor | None, r: int) -> torch.Tensor:
    """The windowed block written out directly: attention among the real tokens of each window only."""
    B, H, W, C = x.shape
    heads, d = blk.attn.num_heads, C // blk.attn.num_heads
    h = blk.norm1(x)
    attn_out = torch.zeros_like(x)
    for b in range(B):
        for y0 in range(0, H, r):
            for x0 in range(0, W, r):
                pos = [(y, xx) for y in range(y0, min(y0 + r, H)) for xx in range(x0, min(x0 + r, W))]
                tokens = torch.stack([h[b, y, xx] for y, xx in pos])  # n, C (real tokens only)
                q, k, v = F.linear(tokens, blk.attn.qkv.weight, blk.attn.qkv.bias).split(C, dim=-1)
                heads_out = []
                for a in range(heads):
                    sl = slice(a * d, (a + 1) * d)
                    logits = q[:, sl] @ k[:, sl].t() / math.sqrt(d)
                    if table is not None:
                        for i, (yi, xi) in enumerate(pos):
                            for j, (yj, xj) in enumerate(pos):
                                logits[i, j] += table[(yi - yj + r - 1) * (2 * r - 1) + (xi - xj + r - 1), a]
                    heads_out.append(logits.softmax(-1) @ v[:, sl])
                out = blk.attn.proj(torch.cat(heads_out, dim=-1))
                for n, (y, xx) in enumerate(pos):
                    attn_out[b, y, xx] = out[n]
    x = x + attn_out
    return x + blk.mlp(blk.norm2(x))


@pytest.mark.parametrize("with_bias", [False, True])
def test_padding_never_leaks_into_a_windowed_block(with_bias):
    torch.manual_seed(0)
    r, heads = 3, 2
    blk = Block(16, heads, window_size=r)
    rel = RelPosBias((r, r), heads)
    torch.nn.init.normal_(rel.relative_position_bias_table, std=1.0)
    x = torch.randn(2, 5, 7, 16)  # 5x7 grid: partial windows on the right and at the bottom
    with torch.no_grad():
        got = blk(x, window_attn_mask((5, 7), r, 2, rel((r, r))) if with_bias else None)
        want = reference_windowed_block(blk, x, rel.relative_position_bias_table if with_bias else None, r)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_window_covering_the_grid_is_exactly_global_attention():
    """r = G with the same relative table, and r > G (padded) with the matching centre of its table."""
    glob = tiny(window_size=0, use_rel_pos=True)
    randomize_rel_tables(glob)
    x = torch.randn(2, 3, 20, 20)
    for r in (5, 7):  # grid is 5
        win = tiny(window_size=r, global_blocks=(), use_rel_pos=True, pretrain_img_size=4 * r)
        state = {k: v for k, v in glob.state_dict().items() if not k.startswith(("rel_pos", "pos_embed"))}
        win.load_state_dict(state, strict=False)
        win.pos_embed = None
        glob_r = copy.deepcopy(glob)
        glob_r.pos_embed = None
        big = torch.randn(2 * r - 1, 2 * r - 1, 2)  # window table; its centre 9x9 covers all 5x5-grid offsets
        c = r - 5
        with torch.no_grad():
            win.rel_pos_window.relative_position_bias_table.copy_(big.reshape(-1, 2))
            glob_r.rel_pos_global.relative_position_bias_table.copy_(big[c : c + 9, c : c + 9].reshape(-1, 2))
            torch.testing.assert_close(win.forward_features(x), glob_r.forward_features(x), atol=1e-5, rtol=1e-5)


def test_all_window_and_all_global_are_expressible():
    assert tiny(global_blocks=()).global_blocks == ()
    assert all(b.window_size == 3 for b in tiny(global_blocks=()).blocks)
    assert tiny(window_size=0).global_blocks == tuple(range(8))
    assert tiny(global_blocks=range(8)).global_blocks == tuple(range(8))


# -- relative position bias --------------------------------------------------------------------------
def test_rel_pos_bias_matches_the_table_entry_by_entry():
    rel = RelPosBias((2, 3), 2)
    torch.nn.init.normal_(rel.relative_position_bias_table)
    bias = rel((2, 3))
    assert bias.shape == (2, 6, 6)
    pos = [(y, x) for y in range(2) for x in range(3)]
    table = rel.relative_position_bias_table
    for i, (yi, xi) in enumerate(pos):
        for j, (yj, xj) in enumerate(pos):
            assert torch.equal(bias[:, i, j], table[(yi - yj + 1) * 5 + (xi - xj + 2)])


def test_zero_relative_bias_equals_no_bias():
    x = torch.randn(2, 3, 20, 20)
    with_rel = tiny(use_rel_pos=True)  # relative tables are zero-initialized
    without = tiny(use_rel_pos=False)
    without.load_state_dict(with_rel.state_dict(), strict=False)
    torch.testing.assert_close(with_rel.forward_features(x), without.forward_features(x), atol=1e-6, rtol=1e-6)
    randomize_rel_tables(with_rel)
    assert not torch.allclose(with_rel.forward_features(x), without.forward_features(x), atol=1e-3)


def test_global_relative_table_is_resized_for_another_input_size():
    vit = tiny(window_size=0, use_rel_pos=True)
    randomize_rel_tables(vit)
    out = vit.forward_features(torch.randn(1, 3, 28, 24))  # grid 7x6 instead of 5x5
    assert out.shape == (1, 7, 6, 32)
    out.sum().backward()
    assert vit.rel_pos_global.relative_position_bias_table.grad.abs().sum() > 0


def test_abs_pos_is_stored_at_the_pretraining_grid_and_resized_in_forward():
    vit = tiny(layer_scale_init=0.0)  # zero layer scale: every block is the identity
    assert vit.pos_embed.shape == (1, 1 + 3 * 3, 32) and vit.pretrain_grid == (3, 3)
    torch.nn.init.normal_(vit.pos_embed)
    images = torch.randn(1, 3, 20, 20)
    expected = vit.patch_embed(images) + resize_abs_pos_embed(vit.pos_embed, (5, 5), 1, (3, 3))
    torch.testing.assert_close(vit.forward_features(images), expected)
    assert not torch.allclose(vit.forward_features(images), vit.patch_embed(images))


# -- checkpointing, layer scale, drop path -------------------------------------------------------------
def test_checkpointed_and_plain_blocks_give_the_same_gradients():
    plain = tiny(use_rel_pos=True, drop_path_rate=0.3, layer_scale_init=0.5).train()
    randomize_rel_tables(plain)
    ckpt = copy.deepcopy(plain)
    ckpt.use_checkpoint = True
    x = torch.randn(2, 3, 20, 20)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # the same drop-path draws
        sum(o.square().sum() for o in model(x)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-4, msg=n)


def test_layer_scale_parameters_and_identity_at_zero():
    vit = tiny(layer_scale_init=0.1)
    names = {n for n, _ in vit.named_parameters()}
    assert {"blocks.0.ls1.gamma", "blocks.0.ls2.gamma"} <= names
    assert all(torch.all(b.ls1.gamma == 0.1) and torch.all(b.ls2.gamma == 0.1) for b in vit.blocks)
    assert not any(".ls" in n for n, _ in tiny().named_parameters())  # None: no layer scale


def test_drop_path_rates_increase_linearly_and_eval_is_deterministic():
    vit = tiny(depth=8, drop_path_rate=0.7)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in vit.blocks]
    assert rates == pytest.approx([0.1 * i for i in range(8)])
    assert isinstance(vit.blocks[0].drop_path, torch.nn.Identity)
    x = torch.randn(4, 3, 20, 20)
    vit.eval()
    torch.manual_seed(0)
    a = vit.forward_features(x)
    torch.manual_seed(1)
    assert torch.equal(a, vit.forward_features(x))
    vit.train()
    torch.manual_seed(0)
    b = vit.forward_features(x)
    torch.manual_seed(1)
    assert not torch.allclose(b, vit.forward_features(x))


# -- initialization ------------------------------------------------------------------------------------
def test_random_init_is_beit_style():
    torch.manual_seed(0)
    vit = build_backbone("vit_micro")
    std0 = vit.blocks[0].attn.qkv.weight.std().item()
    assert std0 == pytest.approx(0.02, rel=0.05)
    for i, blk in enumerate(vit.blocks):
        for w in (blk.attn.proj.weight, blk.mlp.fc2.weight):  # rescaled by 1/sqrt(2 (i+1))
            assert w.std().item() == pytest.approx(0.02 / math.sqrt(2 * (i + 1)), rel=0.08), (i, w.shape)
        assert blk.mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.all(blk.attn.qkv.bias == 0) and torch.all(blk.norm1.weight == 1)
    assert vit.pos_embed.std().item() == pytest.approx(0.02, rel=0.15)
    assert torch.all(vit.rel_pos_window.relative_position_bias_table == 0)


def test_reset_positional_rand_zero_and_none():
    vit = tiny(use_rel_pos=True)
    randomize_rel_tables(vit)
    pos_before = vit.pos_embed.detach().clone()
    vit.reset_positional(abs_pos=None, rel_pos="zero")
    assert torch.equal(vit.pos_embed, pos_before)
    assert all(torch.all(m.relative_position_bias_table == 0) for m in (vit.rel_pos_window, vit.rel_pos_global))
    vit.reset_positional(abs_pos="zero", rel_pos="rand")
    assert torch.all(vit.pos_embed == 0)
    assert all(m.relative_position_bias_table.std() > 0.005 for m in (vit.rel_pos_window, vit.rel_pos_global))
    tiny(use_abs_pos=False, use_rel_pos=False).reset_positional("rand", "rand")  # nothing to reset: no error
    with pytest.raises(ValueError, match=r"'pt'.*allowed 'rand' or 'zero'"):
        vit.reset_positional(abs_pos="pt")


# -- presets and the timm layout ----------------------------------------------------------------------
def test_presets_and_the_papers_hybrid_default():
    dims = {k: (v["embed_dim"], v["depth"], v["num_heads"]) for k, v in PRESETS.items()}
    assert dims == {
        "vit_micro": (128, 8, 4),
        "vit_tiny": (192, 12, 3),
        "vit_small": (384, 12, 6),
        "vit_base": (768, 12, 12),
        "vit_large": (1024, 24, 16),
        "vit_huge": (1280, 32, 16),
    }
    with torch.device("meta"):  # shapes only, no memory
        base, large = build_backbone("vit_base"), build_backbone("vit_large")
    assert base.global_blocks == (2, 5, 8, 11) and large.global_blocks == (5, 11, 17, 23)
    assert base.patch_size == 16 and base.window_size == 14 and base.grid == (64, 64)
    assert default_global_blocks(32) == (7, 15, 23, 31)


def test_vit_base_parameter_count_matches_timm_up_to_the_accounted_differences():
    timm = pytest.importorskip("timm")
    ref = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    ours = build_backbone("vit_base", img_size=224)  # abs pos with a class slot, rel pos in both kinds of block
    ours_p = {n: p.shape for n, p in ours.named_parameters()}
    ref_p = {n: p.shape for n, p in ref.named_parameters()}
    only_ours = set(ours_p) - set(ref_p)
    only_ref = set(ref_p) - set(ours_p)
    assert only_ours == {"rel_pos_window.relative_position_bias_table", "rel_pos_global.relative_position_bias_table"}
    assert only_ref == {"cls_token", "norm.weight", "norm.bias"}  # no class token, no final norm
    assert all(ours_p[n] == ref_p[n] for n in set(ours_p) & set(ref_p))  # pos_embed (1, 197, 768) included
    count = lambda shapes, names: sum(math.prod(shapes[n]) for n in names)  # noqa: E731
    rel = 2 * (2 * 14 - 1) ** 2 * 12  # window 14 and grid 224/16 = 14: two 27x27 tables, 12 heads
    extra_ref = 768 + 2 * 768  # cls token, final norm
    assert count(ours_p, ours_p) - rel == count(ref_p, ref_p) - extra_ref


# -- bad input -----------------------------------------------------------------------------------------
def test_bad_input_raises_clear_value_errors():
    vit = tiny()
    with pytest.raises(ValueError, match=r"image size 18x20 is not a multiple of patch_size=4"):
        vit(torch.randn(1, 3, 18, 20))
    with pytest.raises(ValueError, match=r"'vit_gigantic'; allowed: vit_micro, vit_tiny, .*vit_huge"):
        build_backbone("vit_gigantic")
    with pytest.raises(ValueError, match=r"global_blocks \[8, 11\] out of range: allowed 0\.\.7"):
        tiny(global_blocks=(1, 8, 11))
    with pytest.raises(ValueError, match=r"embed_dim=30 is not divisible by num_heads=4"):
        tiny(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match=r"img_size=22 is not a multiple of patch_size=4"):
        tiny(img_size=22)
    with pytest.raises(ValueError, match=r"bad override for backbone 'vit_micro'.*colour"):
        build_backbone("vit_micro", colour="red")
