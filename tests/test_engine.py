"""Engine units: schedule, parameter groups, sync BN, sharded batches, checkpoints, non-finite loss."""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from studylib import config
from studylib.engine import build_optimizer, build_scheduler, effective_lr, lr_factor, num_iterations, param_groups
from studylib.engine.checkpoint import load_checkpoint, save_checkpoint
from studylib.engine.distributed import NaiveSyncBatchNorm, ShardedBatchSampler, convert_sync_batchnorm
from studylib.engine.schedule import WARMUP_FACTOR, warmup_iterations
from studylib.models import build_backbone

torch.set_num_threads(1)
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def cosine(t: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * t / total))


# -- schedule --------------------------------------------------------------------------------------
def test_iterations_follow_epochs_and_max_iters():
    assert num_iterations(25, 118_000, 64) == math.ceil(25 * 118_000 / 64)
    assert num_iterations(1.5, 10, 4) == 4  # ceil(3.75)
    assert num_iterations(25, 118_000, 64, max_iters=7) == 7
    assert warmup_iterations(0.25, 118_000, 64, 10**6) == math.ceil(0.25 * 118_000 / 64)
    with pytest.raises(ValueError, match="max_iters"):
        num_iterations(1, 10, 2, max_iters=0)


def test_schedule_values_match_warmup_and_cosine():
    total, warmup = 100, 10
    assert lr_factor(0, total, warmup) == pytest.approx(WARMUP_FACTOR)
    half = WARMUP_FACTOR * 0.5 + 0.5
    assert lr_factor(5, total, warmup) == pytest.approx(half * cosine(5, total))
    assert lr_factor(warmup, total, warmup) == pytest.approx(cosine(warmup, total))  # warmup end
    assert lr_factor(50, total, warmup) == pytest.approx(0.5)  # mid-run: half of the base lr
    assert lr_factor(total, total, warmup) == pytest.approx(0.0, abs=1e-12)  # decays to 0
    values = [lr_factor(t, total, warmup) for t in range(warmup, total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_scheduler_drives_every_group():
    p1, p2 = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p1], "lr": 1.0}, {"params": [p2], "lr": 0.25}])
    sched = build_scheduler(opt, total=20, warmup=4)
    for t in range(20):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_factor(t, 20, 4))
        assert opt.param_groups[1]["lr"] == pytest.approx(0.25 * lr_factor(t, 20, 4))
        opt.step()
        sched.step()


def test_effective_lr_follows_global_batch():
    assert effective_lr(8e-5, 1.0, 64, 64) == pytest.approx(8e-5)
    assert effective_lr(1.6e-4, 2.0, 16, 64) == pytest.approx(8e-5)


# -- parameter groups ------------------------------------------------------------------------------
def tiny_detector_like() -> nn.Module:
    vit = build_backbone("vit_micro", depth=4, embed_dim=32, num_heads=2, img_size=64, global_blocks=[3])
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.vit = vit
    model.head = nn.Sequential(nn.Conv2d(32, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 2))
    return model


def group_of(groups: list[dict]) -> dict[str, dict]:
    out = {}
    for g in groups:
        for n in g["names"]:
            assert n not in out, f"{n} in two groups"
            out[n] = g
    return out


def test_param_groups_exempt_norms_biases_and_positions():
    model = tiny_detector_like()
    by_name = group_of(param_groups(model, weight_decay=0.1))
    assert set(by_name) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        exempt = p.ndim <= 1 or "pos_embed" in name or "relative_position_bias_table" in name
        assert by_name[name]["weight_decay"] == (0.0 if exempt else 0.1), name
        assert by_name[name]["lr_scale"] == 1.0
    assert by_name["backbone.vit.rel_pos_window.relative_position_bias_table"]["weight_decay"] == 0.0
    assert by_name["backbone.vit.pos_embed"]["weight_decay"] == 0.0
    assert by_name["backbone.vit.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.1


def test_layer_decay_scales_each_block():
    model, decay, depth = tiny_detector_like(), 0.5, 4
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, layer_decay=decay)
    by_name = group_of(opt.param_groups)
    for i in range(depth):
        assert by_name[f"backbone.vit.blocks.{i}.mlp.fc1.weight"]["lr"] == pytest.approx(1e-3 * decay ** (depth - i))
        assert by_name[f"backbone.vit.blocks.{i}.norm1.weight"]["weight_decay"] == 0.0
    assert by_name["backbone.vit.patch_embed.proj.weight"]["lr"] == pytest.approx(1e-3 * decay ** (depth + 1))
    assert by_name["head.0.weight"]["lr"] == pytest.approx(1e-3)
    assert by_name["backbone.vit.rel_pos_global.relative_position_bias_table"]["lr"] == pytest.approx(1e-3)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)


def test_layer_decay_rejects_bad_values():
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(tiny_detector_like(), 0.1, layer_decay=1.5)
    with pytest.raises(ValueError, match="ViT"):
        param_groups(nn.Linear(2, 2), 0.1, layer_decay=0.7)


# -- sharded batches -------------------------------------------------------------------------------
def test_shards_partition_the_epoch_and_resume_mid_epoch():
    single = ShardedBatchSampler(12, 2, seed=3)
    single.set_epoch(1)
    order = [i for b in single for i in b]
    assert sorted(order) == list(range(12))
    shards = []
    for rank in range(2):
        s = ShardedBatchSampler(12, 1, rank, 2, seed=3)
        s.set_epoch(1)
        shards.append([b[0] for b in s])
    # global batch 2: step k sees the same two images in one process or in two
    assert [sorted(pair) for pair in zip(*shards)] == [sorted(order[2 * k : 2 * k + 2]) for k in range(6)]
    single.set_epoch(1, start=4)
    assert [i for b in single for i in b] == order[8:]
    single.set_epoch(2)
    assert [i for b in single for i in b] != order
    with pytest.raises(ValueError, match="no full batch"):
        ShardedBatchSampler(3, 4, 0, 2)


# -- checkpoints -----------------------------------------------------------------------------------
def test_checkpoint_restores_model_optimizer_schedule_and_rng(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, total=10, warmup=2)
    for _ in range(3):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        sched.step()
    path = save_checkpoint(tmp_path / "checkpoints" / "last.pth", model, opt, sched, 3, 1, 1)
    expected = (torch.rand(2), np.random.rand(), random.random())
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    lr = opt.param_groups[0]["lr"]

    model2 = nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    sched2 = build_scheduler(opt2, total=10, warmup=2)
    state = load_checkpoint(path, model2, opt2, sched2)
    assert state["iteration"] == 3 and (state["epoch"], state["position"]) == (1, 1)
    assert all(torch.equal(weights[k], v) for k, v in model2.state_dict().items())
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    got = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth", model2, opt2, sched2)


# -- synchronized BatchNorm on CPU (gloo) ----------------------------------------------------------
def _sync_bn_worker(rank: int, init_file: str, x: torch.Tensor, out: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    bn = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), torch.device("cpu"))
    assert isinstance(bn[0], NaiveSyncBatchNorm)
    with torch.no_grad():
        bn[0].weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    part = x[rank * 3 : (rank + 1) * 3].clone().requires_grad_(True)  # uneven: 3 and 1 images
    y = bn(part)
    (y * torch.arange(y.numel()).view_as(y).float()).sum().backward()
    out[rank] = (y.detach(), part.grad, bn[0].weight.grad, bn[0].running_mean.clone(), bn[0].running_var.clone())
    dist.destroy_process_group()


def test_naive_sync_batchnorm_conversion_keeps_the_tensors_of_the_batchnorm():
    bn = nn.BatchNorm2d(3).double()
    bn.weight.requires_grad_(False)  # a frozen BatchNorm stays frozen
    sync = convert_sync_batchnorm(nn.Sequential(bn), torch.device("cpu"))[0]
    assert isinstance(sync, NaiveSyncBatchNorm)
    assert sync.weight is bn.weight and sync.bias is bn.bias and sync.running_var is bn.running_var
    assert sync.running_mean.dtype == torch.float64 and not sync.weight.requires_grad


def test_naive_sync_batchnorm_matches_batchnorm_on_the_whole_batch():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    with tempfile.TemporaryDirectory() as d:
        manager = mp.Manager()
        out = manager.dict()
        mp.spawn(_sync_bn_worker, args=(str(Path(d) / "init"), x, out), nprocs=2, join=True)
        out = dict(out)
    ref = nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    # rank 0 holds images 0-2, rank 1 image 3
    xr = x.clone().requires_grad_(True)
    y = ref(xr)
    w = torch.cat([torch.arange(3 * 75).float(), torch.arange(75).float()]).view_as(y)
    (y * w).sum().backward()
    torch.testing.assert_close(torch.cat([out[0][0], out[1][0]]), y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([out[0][1], out[1][1]]), xr.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[0][2] + out[1][2], ref.weight.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(out[0][3], ref.running_mean)
    torch.testing.assert_close(out[0][4], ref.running_var, atol=1e-5, rtol=1e-4)


# -- non-finite loss -------------------------------------------------------------------------------
def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    from studylib import engine
    from studylib.engine import trainer

    cfg = config.load(
        PARAMS,
        "smoke",
        [
            f"data.root={tmp_path / 'data'}",
            "train.max_iters=6",
            "train.checkpoint_every=2",
            "data.synthetic={num_train: 4, num_val: 2, num_unlabeled: 0}",
        ],
    )
    real_build = trainer.build_model

    def build_poisoned(*args, **kwargs):
        model = real_build(*args, **kwargs)
        forward, calls = model.forward, [0]

        def poisoned(images, targets=None):
            out = forward(images, targets)
            if model.training:
                calls[0] += 1
                if calls[0] == 3:
                    out["loss_mask"] = out["loss_mask"] * float("nan")
            return out

        model.forward = poisoned
        return model

    monkeypatch.setattr(trainer, "build_model", build_poisoned)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"iteration 3: non-finite loss: .*loss_mask=nan"):
        engine.run(cfg, out)
    state = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "metrics.json").exists()


def test_an_output_folder_takes_one_writer_at_a_time(tmp_path):
    from filelock import FileLock

    from studylib import engine

    cfg = config.load(PARAMS, "smoke", [f"data.root={tmp_path / 'data'}", "train.max_iters=1"])
    held = FileLock(tmp_path / "run" / ".run.lock")
    held.acquire()  # another run writes the folder
    with pytest.raises(RuntimeError, match="being written by another run"):
        engine.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing touched
    held.release()  # released: the run may take it
