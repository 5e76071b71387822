"""Pre-training (studylib.pretrain): the four methods learn, write their official layouts exactly,
resume bit-exactly, are deterministic, and reject bad input with clear errors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from studylib.models.pos_embed import get_2d_sincos_pos_embed
from studylib.pretrain import PretrainConfig, run
from studylib.pretrain.__main__ import main as cli_main
from studylib.pretrain.beit import blockwise_mask
from studylib.pretrain.common import batch_indices, find_images
from studylib.pretrain.mae import random_masking
from studylib.pretrain.mocov3 import MoCoV3, moco_vit, momentum_at

C, DEPTH, HEADS, P, IMG = 32, 4, 2, 8, 32  # a tiny ViT on 32² images: a 4x4 grid
GRID = IMG // P
N = GRID * GRID
COLORS = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread (and leave the other core to parallel test runs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**kw) -> PretrainConfig:
    base = dict(
        overrides=dict(embed_dim=C, depth=DEPTH, num_heads=HEADS, patch_size=P),
        img_size=IMG,
        batch_size=8,
        steps=4,
        warmup_steps=1,
        progress=False,
        decoder_embed_dim=16,
        decoder_num_heads=2,
        decoder_depth=1,
        moco_dim=16,
        moco_mlp_dim=32,
        num_tokens=8,
        tokenizer_images=16,
        kmeans_iters=5,
        min_mask_patches=2,
    )
    base.update(kw)
    return PretrainConfig(**base)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16 images (48²) of one coloured square on grey, in nested folders, and a COCO file of the squares."""
    root = tmp_path_factory.mktemp("pretrain_data")
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(16):
        a = np.full((48, 48, 3), 128, np.uint8)
        x, y, s = *rng.integers(2, 20, 2), int(rng.integers(14, 26))
        label = i % len(COLORS)
        a[y : y + s, x : x + s] = COLORS[label]
        sub = root / "images" / f"part{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(sub / f"{i:02d}.png")
        images.append({"id": i + 1, "file_name": f"part{i % 2}/{i:02d}.png", "width": 48, "height": 48})
        anns.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 2 * label + 1,
                "bbox": [int(x), int(y), s, s],
                "area": s * s,
                "iscrowd": 0,
            }
        )
    anns.append({"id": 99, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1})
    ann = root / "instances_train.json"
    ann.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": 2 * k + 1, "name": f"c{k}"} for k in range(len(COLORS))],
            }
        )
    )
    return {"images": root / "images", "ann": ann, "root": root}


def run_method(method, data, out, **kw):
    ann = data["ann"] if method == "supervised" else None
    return run(method, data["images"], out, tiny(**kw), ann_file=ann)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


# -- the corpus -------------------------------------------------------------------------------------
def test_find_images_recursive_and_errors(tmp_path, data):
    assert len(find_images(data["images"])) == 16  # two nested folders
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "b" / "x.JPG", format="JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in find_images(tmp_path)] == ["x.JPG"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty.*no .png/.jpg/.jpeg"):
        run("mae", empty, tmp_path / "m.pth", tiny())
    with pytest.raises(ValueError, match="does not exist"):
        run("mae", tmp_path / "missing", tmp_path / "m.pth", tiny())


def test_unreadable_image_is_named(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="broken.png"):
        run("mae", tmp_path, tmp_path / "out" / "m.pth", tiny(steps=2, batch_size=2))


def test_batches_cover_each_epoch_once():
    seen = [i for s in range(5) for i in batch_indices(10, 4, seed=3, step=s)]  # 2 epochs exactly
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert batch_indices(10, 4, 3, 2) == batch_indices(10, 4, 3, 2) != batch_indices(10, 4, 4, 2)


# -- method internals -------------------------------------------------------------------------------
def test_mae_masking_keeps_exactly_a_quarter():
    x = torch.randn(3, 64, 5)
    visible, mask, ids_restore = random_masking(x, 0.75)
    assert visible.shape == (3, 16, 5)
    assert mask.sum(1).tolist() == [48.0, 48.0, 48.0]
    for b in range(3):  # the visible tokens are exactly those with mask 0, in shuffled order
        kept = x[b][mask[b] == 0]
        assert torch.equal(torch.sort(visible[b], dim=0).values, torch.sort(kept, dim=0).values)
    assert torch.equal(
        torch.gather(torch.arange(64).expand(3, -1), 1, torch.argsort(ids_restore, 1)).sort(1).values,
        torch.arange(64).expand(3, -1),
    )


@pytest.mark.parametrize("grid,ratio", [(8, 0.4), (14, 75 / 196)])
def test_beit_blockwise_mask_covers_the_ratio(grid, ratio):
    torch.manual_seed(0)
    target = round(ratio * grid * grid)
    counts = [int(blockwise_mask(grid, grid, target, min_num_patches=4).sum()) for _ in range(200)]
    assert max(counts) <= target
    assert np.mean(counts) >= 0.9 * target
    m = blockwise_mask(grid, grid, target, min_num_patches=4)
    rows, cols = m.any(1).sum(), m.any(0).sum()
    assert rows < grid or cols < grid or m.sum() < grid * grid  # blocks, not the whole grid


def test_moco_momentum_schedule_and_update():
    assert momentum_at(0.0, 0.99) == pytest.approx(0.99)
    assert momentum_at(1.0, 0.99) == pytest.approx(1.0)
    for p in (0.1, 0.37, 0.8):
        assert momentum_at(p, 0.99) == pytest.approx(1 - 0.5 * (1 + math.cos(math.pi * p)) * 0.01)
    torch.manual_seed(0)
    model = MoCoV3(moco_vit(IMG, P, C, DEPTH, HEADS, 4.0, stop_grad_conv1=True), dim=16, mlp_dim=32)
    with torch.no_grad():
        for p in model.base_encoder.parameters():
            p.add_(torch.randn_like(p))  # make base and momentum encoders differ
    base = [p.detach().clone() for p in model.base_encoder.parameters()]
    old = [p.detach().clone() for p in model.momentum_encoder.parameters()]
    x = torch.randn(4, 3, IMG, IMG)
    model((x, x), progress=0.3)
    m = momentum_at(0.3, 0.99)
    for b, o, new in zip(base, old, model.momentum_encoder.parameters()):
        torch.testing.assert_close(new, m * o + (1 - m) * b)


# -- the four methods ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["mae", "mocov3", "supervised", "beit"])
def test_method_learns(method, data, tmp_path):
    lr = {"mae": 3e-3, "mocov3": 3e-3, "supervised": 3e-3, "beit": 3e-3}[method]
    s = run_method(
        method, data, tmp_path / f"{method}.pth", steps=24, warmup_steps=2, lr=lr, weight_decay=0.0, drop_path_rate=0.0
    )
    with open(tmp_path / f"{method}.loss.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows]
    assert [int(r["step"]) for r in rows] == list(range(1, 25))
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-6:]) < np.mean(losses[:6]), losses
    assert s["complete"] and s["steps_done"] == 24 and s["loss_end"] < s["loss_start"]
    assert json.loads((tmp_path / f"{method}.summary.json").read_text())["method"] == method
    assert not (tmp_path / f"{method}.resume.pth").exists()  # removed once complete


def _block_keys(i: int, beit: bool = False) -> set[str]:
    keys = {
        f"blocks.{i}.{k}"
        for k in (
            "norm1.weight",
            "norm1.bias",
            "attn.qkv.weight",
            "attn.proj.weight",
            "attn.proj.bias",
            "norm2.weight",
            "norm2.bias",
            "mlp.fc1.weight",
            "mlp.fc1.bias",
            "mlp.fc2.weight",
            "mlp.fc2.bias",
        )
    }
    extra = ("gamma_1", "gamma_2", "attn.q_bias", "attn.v_bias") if beit else ("attn.qkv.bias",)
    return keys | {f"blocks.{i}.{k}" for k in extra}


VIT_KEYS = {
    "cls_token",
    "pos_embed",
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "norm.weight",
    "norm.bias",
}.union(*(_block_keys(i) for i in range(DEPTH)))


@pytest.fixture(scope="module")
def checkpoints(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain_ckpt")
    return {
        m: (out / f"{m}.pth", run_method(m, data, out / f"{m}.pth", steps=3))
        for m in ("mae", "mocov3", "supervised", "beit")
    }


def test_mae_layout(checkpoints):
    ck = load(checkpoints["mae"][0])
    assert set(ck) == {"model"} and set(ck["model"]) == VIT_KEYS
    sd = ck["model"]
    assert sd["pos_embed"].shape == (1, 1 + N, C) and sd["cls_token"].shape == (1, 1, C)
    expected = torch.from_numpy(get_2d_sincos_pos_embed(C, GRID, cls_token=True))
    torch.testing.assert_close(sd["pos_embed"][0], expected)  # fixed sin-cos, zero class slot
    assert sd["patch_embed.proj.weight"].shape == (C, 3, P, P)
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * C, C) and sd["blocks.0.mlp.fc1.weight"].shape == (4 * C, C)


def test_mae_full_variant_has_decoder(data, tmp_path):
    run_method("mae", data, tmp_path / "full.pth", steps=1, save_decoder=True)
    keys = set(load(tmp_path / "full.pth")["model"])
    assert VIT_KEYS < keys
    assert {
        "mask_token",
        "decoder_embed.weight",
        "decoder_pos_embed",
        "decoder_norm.weight",
        "decoder_pred.weight",
        "decoder_blocks.0.attn.qkv.weight",
    } <= keys


def test_mocov3_layout_and_frozen_patch_embedding(checkpoints, data):
    path, summary = checkpoints["mocov3"]
    ck = load(path)
    assert set(ck) == {"epoch", "arch", "state_dict", "optimizer"}
    assert ck["arch"] == "vit_micro" and ck["epoch"] == math.ceil(3 * 8 / 16)
    sd = ck["state_dict"]
    assert {k.split(".")[1] for k in sd} == {"base_encoder", "momentum_encoder", "predictor"}
    assert all(k.startswith("module.") for k in sd)
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    head = (
        {"head.0.weight", "head.3.weight", "head.6.weight"}
        | {f"head.{i}.{k}" for i in (1, 4) for k in bn}
        | {f"head.7.{k}" for k in bn[2:]}
    )  # last BN has no affine parameters
    for enc in ("base_encoder", "momentum_encoder"):
        assert {k.removeprefix(f"module.{enc}.") for k in sd if k.startswith(f"module.{enc}.")} == VIT_KEYS | head
    assert {k.removeprefix("module.predictor.") for k in sd if k.startswith("module.predictor.")} == {
        "0.weight",
        "3.weight",
    } | {f"1.{k}" for k in bn} | {f"4.{k}" for k in bn[2:]}
    # MoCo v3's sin-cos table: the row in the first channel half (the MAE table with halves swapped)
    mae_table = torch.from_numpy(get_2d_sincos_pos_embed(C, GRID, cls_token=True))
    torch.testing.assert_close(
        sd["module.base_encoder.pos_embed"][0], torch.cat([mae_table[:, C // 2 :], mae_table[:, : C // 2]], 1)
    )
    # the frozen random patch embedding is the one drawn at initialization, in both encoders
    torch.manual_seed(0)
    init = moco_vit(IMG, P, C, DEPTH, HEADS, 4.0, stop_grad_conv1=True)
    for enc in ("base_encoder", "momentum_encoder"):
        torch.testing.assert_close(sd[f"module.{enc}.patch_embed.proj.weight"], init.patch_embed.proj.weight)
    assert not torch.equal(sd["module.base_encoder.blocks.0.attn.qkv.weight"], init.blocks[0].attn.qkv.weight)


def test_supervised_layout(checkpoints):
    path, summary = checkpoints["supervised"]
    sd = load(path)["model"]
    assert set(sd) == VIT_KEYS | {"head.weight", "head.bias"}
    assert sd["head.weight"].shape == (len(COLORS), C) and sd["head.bias"].shape == (len(COLORS),)
    assert summary["num_classes"] == 3 and summary["crops"] == 16 and summary["skipped_crowd"] == 1


def test_beit_layout(checkpoints):
    path, summary = checkpoints["beit"]
    sd = load(path)["model"]
    expected = {
        "cls_token",
        "mask_token",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "rel_pos_bias.relative_position_bias_table",
        "norm.weight",
        "norm.bias",
        "lm_head.weight",
        "lm_head.bias",
    }.union(*(_block_keys(i, beit=True) for i in range(DEPTH)))
    assert set(sd) == expected
    assert sd["rel_pos_bias.relative_position_bias_table"].shape == ((2 * GRID - 1) ** 2 + 3, HEADS)
    assert sd["lm_head.weight"].shape == (8, C)
    assert sd["blocks.0.gamma_1"].shape == (C,)
    assert sd["blocks.0.gamma_1"].sub(0.1).abs().max() < 0.05  # layer scale from 0.1, 3 small steps
    tok = load(path.with_name("beit.tokenizer.pth"))
    assert tok["codebook"].shape == (8, P * P * 3) and summary["tokenizer_file"].endswith("beit.tokenizer.pth")


@pytest.mark.parametrize("method", ["mae", "mocov3", "supervised", "beit"])
def test_checkpoint_loads_into_backbone(method, checkpoints):
    ckpt = pytest.importorskip("studylib.checkpoints")
    from studylib.models.vit import build_backbone

    extra = {"layer_scale_init": 0.1} if method == "beit" else {}
    vit = build_backbone(
        "vit_micro",
        embed_dim=C,
        depth=DEPTH,
        num_heads=HEADS,
        patch_size=P,
        pretrain_img_size=IMG,
        img_size=2 * IMG,
        window_size=GRID,
        **extra,
    )
    report = ckpt.load_pretrained(vit, checkpoints[method][0])
    block_params = {k for k in vit.state_dict() if k.startswith(("blocks.", "patch_embed."))}
    assert block_params <= set(report.loaded), sorted(block_params - set(report.loaded))
    positional = {
        "pos_embed",
        "rel_pos_window.relative_position_bias_table",
        "rel_pos_global.relative_position_bias_table",
    }
    assert set(report.missing) <= positional
    if method != "beit":
        assert "pos_embed" in report.loaded  # pre-trained absolute embedding transferred
    sd = load(checkpoints[method][0])
    sd = sd.get("model") or {k.removeprefix("module.base_encoder."): v for k, v in sd["state_dict"].items()}
    torch.testing.assert_close(vit.state_dict()["blocks.1.mlp.fc1.weight"], sd["blocks.1.mlp.fc1.weight"])


# -- resume, determinism ------------------------------------------------------------------------------
def test_resume_reproduces_uninterrupted_run(data, tmp_path):
    kw = dict(steps=7, checkpoint_every=2)
    run_method("mae", data, tmp_path / "a" / "mae.pth", **kw)
    part = run_method("mae", data, tmp_path / "b" / "mae.pth", stop_after=3, **kw)
    assert not part["complete"] and part["steps_done"] == 3
    assert (tmp_path / "b" / "mae.resume.pth").exists() and not (tmp_path / "b" / "mae.pth").exists()
    done = run_method("mae", data, tmp_path / "b" / "mae.pth", resume=True, **kw)
    assert done["complete"] and done["resumed_from"] == 3
    a, b = load(tmp_path / "a" / "mae.pth")["model"], load(tmp_path / "b" / "mae.pth")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (tmp_path / "a" / "mae.loss.csv").read_text() == (tmp_path / "b" / "mae.loss.csv").read_text()


def test_resume_errors(data, tmp_path):
    with pytest.raises(ValueError, match="no resume state"):
        run_method("mae", data, tmp_path / "mae.pth", resume=True)
    run_method("mae", data, tmp_path / "mae.pth", steps=4, stop_after=1)
    with pytest.raises(ValueError, match=r"different config \(lr"):
        run_method("mae", data, tmp_path / "mae.pth", steps=4, lr=1e-2, resume=True)
    with pytest.raises(ValueError, match="for method 'mae', not 'beit'"):
        run("beit", data["images"], tmp_path / "mae.pth", tiny(steps=4, resume=True))


@pytest.mark.parametrize("method", ["beit", "mocov3"])
def test_same_seed_same_weights(method, data, tmp_path):
    sds = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_method(method, data, tmp_path / f"{name}.pth", steps=2, seed=seed)
        ck = load(tmp_path / f"{name}.pth")
        sds.append(ck.get("model") or ck["state_dict"])
    assert all(torch.equal(sds[0][k], sds[1][k]) for k in sds[0])
    assert not all(torch.equal(sds[0][k], sds[2][k]) for k in sds[0])


# -- configuration and CLI ------------------------------------------------------------------------------
def test_config_errors_and_epochs(data, tmp_path):
    with pytest.raises(ValueError, match="allowed: mae, mocov3, supervised, beit"):
        run("simclr", data["images"], tmp_path / "x.pth", tiny())
    with pytest.raises(ValueError, match="needs ann_file"):
        run("supervised", data["images"], tmp_path / "x.pth", tiny())
    with pytest.raises(ValueError, match="overrides.*window_size.*allowed"):
        tiny(overrides={"window_size": 4}).resolved("mae")
    with pytest.raises(ValueError, match="not both"):
        tiny(epochs=1.0).resolved("mae", 16)
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny(mask_ratio=1.0).resolved("mae")
    assert tiny(steps=None, epochs=2.0).resolved("mae", dataset_len=16).steps == 4  # 2 * 16 / 8
    assert PretrainConfig().resolved("mae").img_size == 64  # vit_micro pre-trains at 64²
    s = run_method("mae", data, tmp_path / "e.pth", steps=None, epochs=1.0)
    assert s["steps"] == 2


def test_cli(data, tmp_path, capsys):
    out = tmp_path / "cli" / "sup.pth"
    cli_main(
        [
            "--method",
            "supervised",
            "--images",
            str(data["images"]),
            "--ann-file",
            str(data["ann"]),
            "--out",
            str(out),
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--img-size",
            str(IMG),
            "--override",
            f"embed_dim={C}",
            "--override",
            f"depth={DEPTH}",
            "--override",
            f"num_heads={HEADS}",
            "--no-progress",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps_done"] == 2 and out.exists()
    assert set(load(out)["model"]) == VIT_KEYS | {"head.weight", "head.bias"}
