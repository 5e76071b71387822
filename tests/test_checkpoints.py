"""Checkpoints of the five initializations load into our ViT, by the paper's rules, and say what they did.

Checkpoints are built here in each official release layout (key names, nesting, prefixes and extra
keys from the official code) at tiny widths: timm's VisionTransformer and Beit produce the shared
parts, the wrappers and pre-training-only keys are added by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.models.beit import Beit
from timm.models.vision_transformer import VisionTransformer

from studylib.checkpoints import LoadReport, detect_format, load_pretrained, plan, positional_flags
from studylib.checkpoints.__main__ import main as cli_main
from studylib.models.pos_embed import gen_relative_position_index, get_2d_sincos_pos_embed, resize_rel_pos_table
from studylib.models.vit import ViT

torch.set_num_threads(1)
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
C, DEPTH, HEADS, PATCH, IMG = 32, 4, 2, 8, 32  # pre-training at 32 px: a 4x4 grid
GRID = IMG // PATCH


def _perturb(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Make every parameter non-trivial (zero biases, unit norms, zero tables would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return module.eval()


def timm_vit(seed: int = 0, num_classes: int = 10) -> VisionTransformer:
    return _perturb(
        VisionTransformer(
            img_size=IMG, patch_size=PATCH, embed_dim=C, depth=DEPTH, num_heads=HEADS, num_classes=num_classes
        ),
        seed,
    )


def timm_beit(seed: int = 0, shared: bool = True, **kw) -> Beit:
    args = dict(use_abs_pos_emb=False, use_shared_rel_pos_bias=shared, use_rel_pos_bias=not shared, init_values=0.1)
    beit = Beit(img_size=IMG, patch_size=PATCH, embed_dim=C, depth=DEPTH, num_heads=HEADS, num_classes=7, **args | kw)
    return _perturb(beit, seed)


def timm_beit_dagger(seed: int = 0) -> Beit:
    """BEiT's --abs_pos_emb --disable_rel_pos_bias --layer_scale_init_value 0 model (BEiT†)."""
    return timm_beit(
        seed, use_abs_pos_emb=True, use_shared_rel_pos_bias=False, use_rel_pos_bias=False, init_values=None
    )


def mocov3_pos_embed(h: int, w: int, dim: int) -> torch.Tensor:
    """MoCo v3 `vits.py` build_2d_sincos_position_embedding, rewritten: (1, 1 + h*w, dim), zero cls slot."""
    grid_w, grid_h = torch.meshgrid(
        torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32), indexing="ij"
    )
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    out_w, out_h = grid_w.flatten()[:, None] * omega, grid_h.flatten()[:, None] * omega
    emb = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim), emb])[None]


# -- official layouts ---------------------------------------------------------------------------------
def mae_encoder_ckpt(vit: VisionTransformer) -> dict:
    """MAE pre-train release: {'model': encoder}, fixed sin-cos pos_embed with a zero cls slot, final norm."""
    sd = {k: v for k, v in vit.state_dict().items() if not k.startswith("head.")}
    sd["pos_embed"] = torch.from_numpy(get_2d_sincos_pos_embed(C, GRID, cls_token=True))[None]
    return {"model": sd}


def mae_full_ckpt(vit: VisionTransformer) -> dict:
    """MAE `_full` / visualize checkpoint: the encoder plus mask_token and the decoder_* of models_mae.py."""
    sd, dd = mae_encoder_ckpt(vit)["model"], 16
    sd["mask_token"] = torch.randn(1, 1, dd)
    sd["decoder_embed.weight"], sd["decoder_embed.bias"] = torch.randn(dd, C), torch.randn(dd)
    sd["decoder_pos_embed"] = torch.randn(1, 1 + GRID * GRID, dd)
    for name, shape in (("norm1.weight", (dd,)), ("attn.qkv.weight", (3 * dd, dd)), ("mlp.fc2.bias", (dd,))):
        sd[f"decoder_blocks.0.{name}"] = torch.randn(shape)
    sd["decoder_norm.weight"], sd["decoder_norm.bias"] = torch.ones(dd), torch.zeros(dd)
    sd["decoder_pred.weight"], sd["decoder_pred.bias"] = torch.randn(PATCH * PATCH * 3, dd), torch.randn(PATCH**2 * 3)
    return {"model": sd}


def deit_ckpt(vit: VisionTransformer) -> dict:
    """DeiT training checkpoint: {'model', 'optimizer', 'lr_scheduler', 'epoch', 'args'} with a head."""
    return {
        "model": vit.state_dict(),
        "optimizer": {"state": {}, "param_groups": []},
        "lr_scheduler": {},
        "epoch": 299,
        "args": argparse.Namespace(model="deit_tiny", lr=5e-4),
    }


def mocov3_ckpt(vit: VisionTransformer) -> dict:
    """main_moco.py: {'epoch', 'arch', 'state_dict', 'optimizer', 'scaler'}, DDP-prefixed encoders."""
    enc = {k: v for k, v in vit.state_dict().items() if not k.startswith("head.")}
    enc["pos_embed"] = mocov3_pos_embed(GRID, GRID, C)
    mlp, out = 24, 8  # builder._build_mlp(3, C, mlp, out): Linear(no bias), BN, ReLU, ..., BN(affine=False)
    head = {
        "head.0.weight": torch.randn(mlp, C),
        "head.3.weight": torch.randn(mlp, mlp),
        "head.6.weight": torch.randn(out, mlp),
    }
    for i, n in (("1", mlp), ("4", mlp)):
        head.update({f"head.{i}.weight": torch.ones(n), f"head.{i}.bias": torch.zeros(n)})
    for i, n in (("1", mlp), ("4", mlp), ("7", out)):
        head.update(
            {
                f"head.{i}.running_mean": torch.zeros(n),
                f"head.{i}.running_var": torch.ones(n),
                f"head.{i}.num_batches_tracked": torch.tensor(5),
            }
        )
    sd = {f"module.base_encoder.{k}": v for k, v in {**enc, **head}.items()}
    sd.update({f"module.momentum_encoder.{k}": v + 0.01 for k, v in {**enc, **head}.items()})
    sd.update({"module.predictor.0.weight": torch.randn(mlp, out), "module.predictor.3.weight": torch.randn(out, mlp)})
    return {
        "epoch": 300,
        "arch": "vit_small",
        "state_dict": sd,
        "optimizer": {"state": {}, "param_groups": []},
        "scaler": {"scale": 65536.0},
    }


def _beit_index(grid: int) -> torch.Tensor:
    """The official relative_position_index buffer ((N+1)^2, class-token rows included)."""
    n = (2 * grid - 1) ** 2 + 3
    index = torch.zeros(grid * grid + 1, grid * grid + 1, dtype=torch.long)
    index[1:, 1:] = gen_relative_position_index((grid, grid))
    index[0, 0:], index[0:, 0], index[0, 0] = n - 3, n - 2, n - 1
    return index


def beit_pretrain_ckpt(beit: Beit, wrapper: str = "model") -> dict:
    """BEiT pre-training (modeling_pretrain.py): shared table + index buffer, mask_token, norm, lm_head."""
    sd = {k: v for k, v in beit.state_dict().items() if not k.startswith(("fc_norm.", "head."))}
    sd["rel_pos_bias.relative_position_index"] = _beit_index(GRID)
    sd.update(
        {
            "mask_token": torch.randn(1, 1, C),
            "norm.weight": torch.ones(C),
            "norm.bias": torch.zeros(C),
            "lm_head.weight": torch.randn(64, C),
            "lm_head.bias": torch.zeros(64),
        }
    )
    return {wrapper: sd, "epoch": 799, "args": argparse.Namespace(layer_scale_init_value=0.1)}


def beit_dagger_ckpt(beit: Beit) -> dict:
    """beit_base_patch16_224_pt1k_800ep.pth: {'model': sd} of modeling_pretrain.py with an absolute
    `pos_embed`, no relative table, no gamma_1 / gamma_2; mask_token, final norm and lm_head."""
    ckpt = beit_pretrain_ckpt(beit)
    del ckpt["model"]["rel_pos_bias.relative_position_index"]
    assert "pos_embed" in ckpt["model"] and not any("gamma" in k or "relative" in k for k in ckpt["model"])
    return ckpt


def beit_finetuned_ckpt(beit: Beit) -> dict:
    """BEiT fine-tuned (modeling_finetune.py): per-block tables + index buffers, fc_norm, head."""
    sd = dict(beit.state_dict())
    sd.update({f"blocks.{i}.attn.relative_position_index": _beit_index(GRID) for i in range(DEPTH)})
    return {"model": sd}


def our_vit(**kw) -> ViT:
    args = dict(
        img_size=IMG, pretrain_img_size=IMG, patch_size=PATCH, embed_dim=C, depth=DEPTH, num_heads=HEADS, window_size=0
    )
    return ViT(**{**args, **kw}).eval()


def save(obj: dict, tmp_path, name: str = "ckpt.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


IMAGES = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))


def vit_reference(vit: VisionTransformer, pos_embed: torch.Tensor) -> torch.Tensor:
    """The original architecture on the patch tokens only: patch embed + pos_embed[:, 1:], timm blocks."""
    x = vit.patch_embed(IMAGES) + pos_embed[:, 1:]
    for blk in vit.blocks:
        x = blk(x)
    return x


def beit_reference(beit: Beit, table: torch.Tensor) -> torch.Tensor:
    """timm Beit blocks on the patch tokens with the shared bias from the table minus its 3 cls rows."""
    n = GRID * GRID
    bias = table[:-3][gen_relative_position_index((GRID, GRID)).view(-1)].view(n, n, -1).permute(2, 0, 1)
    x = beit.patch_embed(IMAGES)
    for blk in beit.blocks:
        x = blk(x, shared_rel_pos_bias=bias)
    return x


def ours(model: ViT) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(IMAGES).flatten(1, 2)


def assert_all_backbone_loaded(model: ViT, report: LoadReport) -> None:
    for name in model.state_dict():
        if name.startswith(("patch_embed.", "blocks.")):
            assert name in report.loaded, name
    assert report.unexpected == {}


# -- equivalence with the original architectures ------------------------------------------------------
@pytest.mark.parametrize("layout", ["mae_encoder", "mae_full", "deit", "mocov3"])
def test_vit_layouts_match_the_original_forward(tmp_path, layout):
    vit = timm_vit()
    ckpt = {"mae_encoder": mae_encoder_ckpt, "mae_full": mae_full_ckpt, "deit": deit_ckpt, "mocov3": mocov3_ckpt}[
        layout
    ](vit)
    state = ckpt.get("model") or {
        k[len("module.base_encoder.") :]: v
        for k, v in ckpt["state_dict"].items()
        if k.startswith("module.base_encoder.")
    }
    model = our_vit()
    report = load_pretrained(model, save(ckpt, tmp_path))
    assert report.format == {"mae_encoder": "mae", "mae_full": "mae"}.get(layout, layout)
    assert (report.abs_pos, report.rel_pos) == ("pt", "zero")
    assert_all_backbone_loaded(model, report)
    assert report.loaded["pos_embed"]["shape"] == [1, 1 + GRID * GRID, C]  # same grid: copied, not resized
    torch.testing.assert_close(model.pos_embed, state["pos_embed"], rtol=0, atol=0)
    assert torch.count_nonzero(model.rel_pos_global.relative_position_bias_table) == 0
    assert "rel_pos_global.relative_position_bias_table" in report.missing
    torch.testing.assert_close(ours(model), vit_reference(vit, state["pos_embed"]), rtol=1e-4, atol=1e-5)


def test_mae_drops_are_reported_with_reasons(tmp_path):
    report = load_pretrained(our_vit(), save(mae_full_ckpt(timm_vit()), tmp_path))
    for key in (
        "mask_token",
        "decoder_embed.weight",
        "decoder_blocks.0.norm1.weight",
        "decoder_pred.bias",
        "cls_token",
        "norm.weight",
        "norm.bias",
    ):
        assert key in report.dropped, key
    assert "final norm" in report.dropped["norm.weight"]
    assert any("sin-cos" in n for n in report.notes)


def test_mocov3_keeps_only_the_base_encoder(tmp_path):
    vit = timm_vit()
    model = our_vit()
    report = load_pretrained(model, save(mocov3_ckpt(vit), tmp_path))
    assert report.loaded["blocks.0.attn.qkv.weight"]["from"] == "module.base_encoder.blocks.0.attn.qkv.weight"
    assert "module.base_encoder.head.7.running_var" in report.dropped
    assert "module.momentum_encoder.blocks.0.attn.qkv.weight" in report.dropped
    assert "module.predictor.0.weight" in report.dropped
    assert any("transferred as stored" in n for n in report.notes)
    torch.testing.assert_close(model.blocks[3].mlp.fc2.weight, vit.blocks[3].mlp.fc2.weight, rtol=0, atol=0)


@pytest.mark.parametrize("window_size", [0, GRID])  # all global; hybrid whose single window covers the grid
def test_beit_pretrain_matches_the_original_forward(tmp_path, window_size):
    beit = timm_beit()
    table = beit.rel_pos_bias.relative_position_bias_table.detach()
    model = our_vit(layer_scale_init=1.0, use_abs_pos=False, window_size=window_size, global_blocks=[1, 3])
    report = load_pretrained(model, save(beit_pretrain_ckpt(beit), tmp_path), abs_pos="no")
    assert (report.format, report.rel_pos) == ("beit", "pt")
    assert_all_backbone_loaded(model, report)
    for name in ("mask_token", "lm_head.weight", "rel_pos_bias.relative_position_index", "norm.weight"):
        assert name in report.dropped, name
    assert report.loaded["blocks.1.attn.qkv.bias"]["from"].startswith("blocks.1.attn.q_bias")
    qkv_bias = model.blocks[1].attn.qkv.bias.detach()
    torch.testing.assert_close(qkv_bias[C : 2 * C], torch.zeros(C))  # BEiT has no k bias
    torch.testing.assert_close(qkv_bias[2 * C :], beit.blocks[1].attn.v_bias.detach())
    torch.testing.assert_close(model.blocks[2].ls2.gamma, beit.blocks[2].gamma_2, rtol=0, atol=0)
    assert (model.rel_pos_window is not None) == (window_size > 0)
    for module in (model.rel_pos_window, model.rel_pos_global):
        if module is not None:
            torch.testing.assert_close(module.relative_position_bias_table.detach(), table[:-3], rtol=0, atol=0)
    torch.testing.assert_close(ours(model), beit_reference(beit, table), rtol=1e-4, atol=1e-5)


def test_beit_default_rule_randomizes_absolute_embedding(tmp_path):
    model = our_vit(layer_scale_init=0.1)
    report = load_pretrained(model, save(beit_pretrain_ckpt(timm_beit(), wrapper="module"), tmp_path))
    assert (report.abs_pos, report.rel_pos) == ("rand", "pt")
    assert "abs_pos=rand" in report.missing["pos_embed"]
    assert 0.005 < model.pos_embed.std().item() < 0.05


def test_beit_per_block_tables_are_averaged_per_shared_table(tmp_path):
    beit = timm_beit(shared=False)
    tables = torch.stack([b.attn.relative_position_bias_table.detach() for b in beit.blocks])
    model = our_vit(layer_scale_init=0.1, window_size=GRID, global_blocks=[1, 3])
    report = load_pretrained(model, save(beit_finetuned_ckpt(beit), tmp_path))
    assert report.format == "beit"
    assert "blocks.2.attn.relative_position_index" in report.dropped and "head.weight" in report.dropped
    torch.testing.assert_close(model.rel_pos_window.relative_position_bias_table.detach(), tables[[0, 2]].mean(0)[:-3])
    torch.testing.assert_close(model.rel_pos_global.relative_position_bias_table.detach(), tables[[1, 3]].mean(0)[:-3])
    assert "mean of 2 blocks" in report.loaded["rel_pos_global.relative_position_bias_table"]["from"]


# -- resizing ------------------------------------------------------------------------------------------
def test_positional_tables_resized_to_our_grids(tmp_path):
    beit = timm_beit()
    table = beit.rel_pos_bias.relative_position_bias_table.detach()
    # windows of 2x2 and a fine-tuning grid of 8x8 (64 px); absolute table stored at a 6x6 pre-training grid
    model = our_vit(img_size=64, pretrain_img_size=48, window_size=2, global_blocks=[3], layer_scale_init=0.1)
    report = load_pretrained(model, save(beit_pretrain_ckpt(beit), tmp_path))
    assert report.resized["rel_pos_window.relative_position_bias_table"]["to_shape"] == [9, HEADS]
    assert report.resized["rel_pos_global.relative_position_bias_table"] == {
        "from": "rel_pos_bias.relative_position_bias_table",
        "from_shape": [52, HEADS],
        "to_shape": [225, HEADS],
    }
    torch.testing.assert_close(
        model.rel_pos_global.relative_position_bias_table.detach(),
        resize_rel_pos_table(table[:-3], (GRID, GRID), (8, 8)),
    )

    vit = timm_vit()
    model = our_vit(pretrain_img_size=48, img_size=64)
    report = load_pretrained(model, save(deit_ckpt(vit), tmp_path))
    assert report.resized["pos_embed"] == {"from": "pos_embed", "from_shape": [1, 17, C], "to_shape": [1, 37, C]}
    torch.testing.assert_close(model.pos_embed[:, :1], vit.pos_embed[:, :1])  # cls slot carried over


def test_no_cls_slot_in_ours_drops_the_checkpoint_slot(tmp_path):
    vit = timm_vit()
    model = our_vit(pretrain_use_cls_token=False)
    report = load_pretrained(model, save(deit_ckpt(vit), tmp_path))
    torch.testing.assert_close(model.pos_embed, vit.pos_embed[:, 1:], rtol=0, atol=0)
    assert any("prefix slot" in n for n in report.notes)


# -- positional overrides (the paper's ablation) -------------------------------------------------------
def test_positional_overrides(tmp_path):
    path = save(deit_ckpt(timm_vit()), tmp_path)
    model = our_vit()
    report = load_pretrained(model, path, abs_pos="zero", rel_pos="rand")
    assert torch.count_nonzero(model.pos_embed) == 0 and report.dropped["pos_embed"].startswith("abs_pos=zero")
    assert model.rel_pos_global.relative_position_bias_table.std() > 0.005
    flags = positional_flags("no", "no")
    assert flags == {"use_abs_pos": False, "use_rel_pos": False}
    report = load_pretrained(our_vit(**flags), path, abs_pos="no", rel_pos="no")
    assert "pos_embed" in report.dropped and "pos_embed" not in report.missing
    with pytest.raises(ValueError, match="use_abs_pos=False"):
        load_pretrained(our_vit(), path, abs_pos="no")
    with pytest.raises(ValueError, match="rel_pos='pt'.*no relative position bias"):
        load_pretrained(our_vit(), path, rel_pos="pt")
    with pytest.raises(ValueError, match="allowed pt, rand, zero, no"):
        load_pretrained(our_vit(), path, abs_pos="learned")
    with pytest.raises(ValueError, match="abs_pos='pt'.*no absolute"):
        load_pretrained(
            our_vit(layer_scale_init=0.1), save(beit_pretrain_ckpt(timm_beit()), tmp_path, "b.pth"), abs_pos="pt"
        )


def test_random_init_report():
    model = our_vit()
    torch.nn.init.zeros_(model.blocks[0].mlp.fc1.weight)
    report = load_pretrained(model, None, fmt="random")
    assert (report.format, report.path, report.abs_pos, report.rel_pos) == ("random", None, "rand", "zero")
    assert model.blocks[0].mlp.fc1.weight.std() > 0.01
    assert set(report.missing) == set(model.state_dict()) and report.loaded == {}
    with pytest.raises(ValueError, match="needs a checkpoint"):
        load_pretrained(our_vit(), None, fmt="random", abs_pos="pt")
    with pytest.raises(ValueError, match="fmt='random' takes no file"):
        load_pretrained(our_vit(), None, fmt="mae")


# -- mismatches are errors naming keys and shapes ------------------------------------------------------
def test_width_mismatch_names_keys_and_shapes(tmp_path):
    path = save(deit_ckpt(timm_vit()), tmp_path)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight \(96, 32\) vs backbone .* \(144, 48\)"):
        load_pretrained(our_vit(embed_dim=48), path)
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc1\.weight \(128, 32\) vs backbone .* \(64, 32\)"):
        load_pretrained(our_vit(mlp_ratio=2.0), path)


def test_depth_patch_and_layer_scale_mismatches(tmp_path):
    path = save(deit_ckpt(timm_vit()), tmp_path)
    with pytest.raises(ValueError, match="4 blocks .*depth=5"):
        load_pretrained(our_vit(depth=5), path)
    with pytest.raises(ValueError, match=r"8x8 kernel, the backbone patch_size=16"):
        load_pretrained(our_vit(patch_size=16), path)
    with pytest.raises(ValueError, match=r"does not provide: \['blocks\.0\.ls1\.gamma'"):
        load_pretrained(our_vit(layer_scale_init=0.1), path)
    beit_path = save(beit_pretrain_ckpt(timm_beit()), tmp_path, "beit.pth")
    with pytest.raises(ValueError, match=r"layer scale \(blocks\.0\.gamma_1"):
        load_pretrained(our_vit(), beit_path)
    with pytest.raises(ValueError, match=r"relative_position_bias_table \(52, 2\) vs backbone num_heads=4"):
        load_pretrained(our_vit(num_heads=4, layer_scale_init=0.1), beit_path)


def test_unexpected_keys(tmp_path):
    ckpt = deit_ckpt(timm_vit())
    ckpt["model"]["teacher.proj.weight"] = torch.zeros(3, 3)
    path = save(ckpt, tmp_path)
    with pytest.raises(ValueError, match=r"teacher\.proj\.weight \[3, 3\].*strict=False"):
        load_pretrained(our_vit(), path)
    report = load_pretrained(our_vit(), path, strict=False)
    assert report.unexpected == {"teacher.proj.weight": [3, 3]}
    ckpt["model"]["blocks.0.attn.q_norm.weight"] = torch.ones(16)
    with pytest.raises(ValueError, match=r"backbone tensors with no place.*blocks\.0\.attn\.q_norm\.weight"):
        load_pretrained(our_vit(), save(ckpt, tmp_path, "b.pth"), strict=False)


# -- detection, forcing, file types, report and CLI ----------------------------------------------------
def test_detect_format_of_each_layout():
    vit, beit = timm_vit(), timm_beit()
    assert detect_format(mae_encoder_ckpt(vit)) == "mae"
    assert detect_format(mae_full_ckpt(vit)) == "mae"
    assert detect_format(deit_ckpt(vit)) == "deit"
    assert detect_format(mocov3_ckpt(vit)) == "mocov3"
    converted = {
        "model": {
            k[len("module.base_encoder.") :]: v
            for k, v in mocov3_ckpt(vit)["state_dict"].items()
            if k.startswith("module.base_encoder.") and ".head." not in k
        }
    }  # convert_to_deit.py
    assert detect_format(converted) == "mocov3"
    assert detect_format(beit_pretrain_ckpt(beit)) == "beit"
    assert detect_format(beit_pretrain_ckpt(beit, wrapper="module")) == "beit"
    assert detect_format(beit_finetuned_ckpt(timm_beit(shared=False))) == "beit"
    assert detect_format(vit.state_dict()) == "timm"
    with pytest.raises(ValueError, match="no state dict found.*'model'"):
        detect_format({"epoch": 3, "weights": [1, 2]})


def test_forced_format(tmp_path):
    path = save(mae_encoder_ckpt(timm_vit()), tmp_path)
    report = load_pretrained(our_vit(), path, fmt="deit")
    assert report.format == "deit" and any("forced to 'deit'" in n for n in report.notes)
    report = load_pretrained(our_vit(), path, fmt="beit")  # BEiT's rule, the file has no relative table
    assert (report.abs_pos, report.rel_pos, report.layer_scale) == ("pt", "zero", "none")
    with pytest.raises(ValueError, match="rel_pos='pt'"):  # asked for explicitly: an error
        load_pretrained(our_vit(), path, fmt="beit", rel_pos="pt")
    with pytest.raises(ValueError, match="allowed auto, mae, beit, mocov3, deit, timm, random"):
        load_pretrained(our_vit(), path, fmt="dino")


def test_safetensors_and_plain_state_dict(tmp_path):
    vit = timm_vit(num_classes=0)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    model = our_vit()
    report = load_pretrained(model, path)
    assert report.format == "timm"
    assert_all_backbone_loaded(model, report)
    torch.testing.assert_close(ours(model), vit_reference(vit, vit.pos_embed), rtol=1e-4, atol=1e-5)


def test_report_save_roundtrip(tmp_path):
    report = load_pretrained(our_vit(), save(mocov3_ckpt(timm_vit()), tmp_path))
    out = report.save(tmp_path / "run" / "load_report.json")
    assert json.loads(out.read_text()) == report.to_dict()
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind


def test_cli_inspect_prints_json(tmp_path, capsys):
    path = save(beit_pretrain_ckpt(timm_beit()), tmp_path)
    assert cli_main(["inspect", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["detected_format"] == "beit" and out["report"]["format"] == "beit"
    assert out["model"]["num_heads"] == HEADS and out["model"]["embed_dim"] == C and out["model"]["depth"] == DEPTH
    assert "blocks.3.ls2.gamma" in out["report"]["loaded"]
    assert cli_main(["inspect", str(tmp_path / "missing.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_beit_dagger_falls_back_to_abs_pt_rel_zero_no_layer_scale(tmp_path):
    """BEiT's public IN-1k release (--abs_pos_emb, no relative bias, layer scale 0): decided from the file."""
    beit = timm_beit_dagger()
    path = save(beit_dagger_ckpt(beit), tmp_path)
    assert plan(path) == plan(path, "beit")
    decided = plan(path)
    assert (decided.format, decided.abs_pos, decided.rel_pos, decided.layer_scale) == ("beit", "pt", "zero", "none")
    model = our_vit()
    report = load_pretrained(model, path)
    assert (report.format, report.abs_pos, report.rel_pos, report.layer_scale) == ("beit", "pt", "zero", "none")
    assert report.loaded["pos_embed"]["from"] == "pos_embed"
    assert any("BEiT†" in n for n in report.notes) and any("layer scale: none" in n for n in report.notes)
    torch.testing.assert_close(model.pos_embed, beit.pos_embed, rtol=0, atol=0)
    assert torch.count_nonzero(model.rel_pos_global.relative_position_bias_table) == 0
    with pytest.raises(ValueError, match="rel_pos='pt'.*abs_pos='pt', rel_pos='zero'"):  # explicit: still an error
        load_pretrained(our_vit(), path, rel_pos="pt")
    with pytest.raises(ValueError, match="layer_scale='pt' but .* has no layer scale"):
        load_pretrained(our_vit(layer_scale_init=0.1), path, layer_scale="pt")


def test_layer_scale_none_drops_the_files_gammas(tmp_path):
    path = save(beit_pretrain_ckpt(timm_beit()), tmp_path)
    assert plan(path).layer_scale == "pt"
    report = load_pretrained(our_vit(use_abs_pos=True), path, layer_scale="none")
    assert report.layer_scale == "none" and "blocks.0.gamma_1" in report.dropped


# -- every public layout through build_model (init.kind set, default rules) ----------------------------
LAYOUTS = {  # layout: (init.kind, fixture, expected (format, abs_pos, rel_pos, layer_scale))
    "mae_encoder": ("mae", lambda: mae_encoder_ckpt(timm_vit()), ("mae", "pt", "zero", "none")),
    "mae_full": ("mae", lambda: mae_full_ckpt(timm_vit()), ("mae", "pt", "zero", "none")),
    "beit_shared": ("beit", lambda: beit_pretrain_ckpt(timm_beit()), ("beit", "rand", "pt", "pt")),
    "beit_per_block": ("beit", lambda: beit_finetuned_ckpt(timm_beit(shared=False)), ("beit", "rand", "pt", "pt")),
    "beit_dagger": ("beit", lambda: beit_dagger_ckpt(timm_beit_dagger()), ("beit", "pt", "zero", "none")),
    "mocov3": ("mocov3", lambda: mocov3_ckpt(timm_vit()), ("mocov3", "pt", "zero", "none")),
    "deit": ("supervised", lambda: deit_ckpt(timm_vit()), ("deit", "pt", "zero", "none")),
}
TINY_VIT = f"model.overrides={{depth: {DEPTH}, embed_dim: {C}, num_heads: {HEADS}, pretrain_img_size: {IMG}}}"


def layout_config(tmp_path, kind: str, path, *sets: str):
    from studylib import config

    sets = [f"data.root={tmp_path / 'data'}", f"init.kind={kind}", f"init.checkpoint={path}", TINY_VIT, *sets]
    return config.load(PARAMS, "smoke", sets)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_release_layout_loads_through_build_model(tmp_path, layout):
    from studylib.engine.build import build_model, resolve_init

    kind, make, expected = LAYOUTS[layout]
    ckpt = make()
    path = save(ckpt, tmp_path)
    cfg = layout_config(tmp_path, kind, path)
    assert (cfg.init.abs_pos, cfg.init.rel_pos, cfg.init.layer_scale) == (None, None, None)  # default rules
    resolved = resolve_init(cfg)
    assert (resolved.init.format, resolved.init.abs_pos, resolved.init.rel_pos, resolved.init.layer_scale) == expected
    model = build_model(cfg, num_classes=3, out_dir=tmp_path)
    report = json.loads((tmp_path / "load_report.json").read_text())
    assert (report["format"], report["abs_pos"], report["rel_pos"], report["layer_scale"]) == expected
    vit = model.backbone.vit
    for name in vit.state_dict():
        if name.startswith(("patch_embed.", "blocks.")):
            assert name in report["loaded"], name
    assert any(".ls1.gamma" in n for n in vit.state_dict()) == (expected[3] == "pt")
    state = ckpt.get("model") or ckpt["state_dict"]
    key = next(k for k in state if k.endswith("blocks.3.mlp.fc2.weight") and "momentum" not in k)
    torch.testing.assert_close(vit.blocks[3].mlp.fc2.weight, state[key], rtol=0, atol=0)


def test_beit_with_absolute_embedding_config(tmp_path):
    """BEiT's public IN-1k config, built from timm's Beit with its defaults (no layer scale): loads by the fallback."""
    beit = _perturb(
        Beit(
            img_size=IMG,
            patch_size=PATCH,
            embed_dim=C,
            depth=DEPTH,
            num_heads=HEADS,
            num_classes=0,
            use_abs_pos_emb=True,
        ),
        0,
    )
    path = save({"model": beit.state_dict()}, tmp_path)
    model = our_vit()
    report = load_pretrained(model, path)
    assert report.format == "beit" and report.loaded["pos_embed"]["from"] == "pos_embed"
    assert (report.abs_pos, report.rel_pos, report.layer_scale) == ("pt", "zero", "none")
    torch.testing.assert_close(model.pos_embed, beit.pos_embed, rtol=0, atol=0)


def test_beit_dagger_trains_with_init_kind_beit_and_default_rules(tmp_path):
    """The done-when check: a BEiT† file in BEiT's public layout fine-tunes a few iterations, and the run
    says what was decided from the file (load_report.json and the resolved config.yaml)."""
    import yaml

    from studylib import engine

    path = save(beit_dagger_ckpt(timm_beit_dagger()), tmp_path, "beit_dagger.pth")
    small = "data.synthetic={num_train: 8, num_val: 4, num_unlabeled: 0}"
    cfg = layout_config(tmp_path, "beit", path, small, "train.max_iters=2", "train.checkpoint_every=2")
    out = tmp_path / "run"
    engine.run(cfg, out)
    assert (out / "metrics.json").is_file()
    report = json.loads((out / "load_report.json").read_text())
    assert (report["format"], report["abs_pos"], report["rel_pos"], report["layer_scale"]) == (
        "beit",
        "pt",
        "zero",
        "none",
    )
    assert "rel_pos_global.relative_position_bias_table" in report["missing"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["init"] | {"checkpoint": None} == {
        "kind": "beit",
        "checkpoint": None,
        "format": "beit",
        "abs_pos": "pt",
        "rel_pos": "zero",
        "layer_scale": "none",
    }
