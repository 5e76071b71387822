"""Gradient accumulation: train.batch_size reached on fewer processes × train.images_per_gpu images.

BatchNorm / SyncBN statistics are taken per micro-batch (world_size × images_per_gpu images), not over the
global batch: the equivalence below is shown for a detector whose norms do not couple images (GroupNorm
heads, LayerNorm ViT). Each loss term is normalized per micro-batch (as per process under DDP), so a step
is that of the full batch whose loss is the mean of its micro-batches' losses; where the micro-batches
hold the same images it is exactly one step at the full batch without accumulation.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from studylib import config, engine
from studylib.engine import trainer
from studylib.engine.build import build_datasets, build_model
from studylib.engine.distributed import DistInfo, batch_split, wrap_ddp
from studylib.engine.optim import build_optimizer
from studylib.engine.schedule import build_scheduler

torch.set_num_threads(1)
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
SMALL_DATA = "data.synthetic={num_train: 8, num_val: 4, num_unlabeled: 0}"


def smoke(tmp: Path, *sets: str) -> config.ExperimentConfig:
    return config.load(PARAMS, "smoke", [f"data.root={tmp / 'data'}", SMALL_DATA, *sets])


def test_batch_split_and_its_log_line():
    split = batch_split(64, 1, 2)
    assert (split.images_per_gpu, split.accumulation) == (2, 32)
    assert split.describe() == (
        "global batch 64 = 1 GPU × 2 images × 32 accumulation steps; BN statistics over 2 images per step"
    )
    assert batch_split(64, 8, None).accumulation == 1 and batch_split(64, 8, None).images_per_gpu == 8
    assert batch_split(64, 4, 2).describe("process").startswith("global batch 64 = 4 processes × 2 images × 8 ")
    with pytest.raises(ValueError, match=r"train\.batch_size = 64 .*world_size 1 × train\.images_per_gpu 3"):
        batch_split(64, 1, 3)
    with pytest.raises(ValueError, match=r"train\.images_per_gpu 0"):
        batch_split(64, 1, 0)
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        batch_split(64, 3, 2)


def _detector(tmp: Path):
    """A float64 smoke detector with GroupNorm heads that takes every anchor and RoI (no subsampling)."""
    cfg = smoke(tmp, "model.drop_path=0.0", "model.norm=gn", "train.batch_size=4")
    torch.manual_seed(0)
    train_set, _ = build_datasets(cfg)
    draws = [train_set[i] for i in range(4)]
    images = [im.double() for im, _ in draws]
    targets = [
        {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in t.items()} for _, t in draws
    ]
    torch.manual_seed(1)
    model = build_model(cfg, train_set.num_classes).double()
    model.rpn.fg_bg_sampler.batch_size_per_image = 10**6
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 10**6
    return cfg, model.train(), images, targets


def _one_step(cfg, model, images, targets, images_per_gpu, world_size=1):
    """The trainer's train_step on a copy of `model` (or on a DDP model itself): (losses logged, gradients,
    parameters after the step)."""
    model = model if world_size > 1 else copy.deepcopy(model)
    optimizer = build_optimizer(model, 1e-3, cfg.train.weight_decay)
    run = SimpleNamespace(
        cfg=cfg,
        dist_info=DistInfo(),
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, 10, 0),
        scaler=None,
        split=batch_split(len(images) * world_size, world_size, images_per_gpu),
    )
    logged, _ = trainer.train_step(run, images, targets, 1)
    grads = {n.removeprefix("module."): p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logged, grads, {n.removeprefix("module."): p.detach().clone() for n, p in model.named_parameters()}


def _close(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k, v in b.items():
        torch.testing.assert_close(a[k], v, rtol=1e-9, atol=1e-12 + 1e-9 * float(v.abs().max()), msg=k)


def test_accumulation_step_equals_the_full_batch_step(tmp_path):
    cfg, model, images, targets = _detector(tmp_path)
    x, y, z, w = range(4)

    # micro-batches holding the same images: 2 x 2 accumulated == 4 at once, gradients and parameters
    same = [x, y, x, y]
    batch = [images[i] for i in same], [copy.deepcopy(targets[i]) for i in same]
    acc_losses, acc_grads, acc_params = _one_step(cfg, model, *batch, images_per_gpu=2)
    ref_losses, ref_grads, ref_params = _one_step(cfg, model, *batch, images_per_gpu=None)
    _close(acc_grads, ref_grads)
    _close(acc_params, ref_params)
    # the logged losses to float32's precision: torchvision builds the RPN's objectness targets in float32, so
    # loss_objectness (and the total) is rounded to float32 even in a float64 model (2 ULPs apart seen here)
    assert acc_losses == pytest.approx(ref_losses, rel=1e-6)

    # distinct micro-batches: the step of the mean of their losses (a missing 1/2 or a dropped micro-batch fails)
    acc_losses, acc_grads, _ = _one_step(cfg, model, [images[i] for i in (x, y, z, w)], targets, images_per_gpu=2)
    ref = copy.deepcopy(model)
    first = sum(ref(images[:2], copy.deepcopy(targets[:2])).values())
    second = sum(ref(images[2:], copy.deepcopy(targets[2:])).values())
    ((first + second) / 2).backward()
    _close(acc_grads, {n: p.grad for n, p in ref.named_parameters() if p.grad is not None})
    assert acc_losses["loss"] == pytest.approx(float((first + second).detach()) / 2, rel=1e-6)  # float32 targets


def _ddp_worker(rank: int, tmp: str, init_file: str, out: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    cfg, model, images, targets = _detector(Path(tmp))
    mine = slice(2 * rank, 2 * rank + 2)
    model = wrap_ddp(model, torch.device("cpu"))
    logged, grads, _ = _one_step(cfg, model, images[mine], targets[mine], images_per_gpu=1, world_size=2)
    out[rank] = (logged, grads)
    dist.destroy_process_group()


def test_ddp_with_accumulation_matches_the_mean_over_micro_batches(tmp_path):
    """2 processes x 1 image x 2 accumulation steps (no_sync on the first): each process ends the step with
    the gradient of the mean of the 4 single-image losses."""
    cfg, model, images, targets = _detector(tmp_path)  # generates the dataset once
    ref = copy.deepcopy(model)
    losses = [sum(ref([im], [copy.deepcopy(t)]).values()) for im, t in zip(images, targets)]
    (sum(losses) / 4).backward()
    with tempfile.TemporaryDirectory() as d:
        out = mp.Manager().dict()
        mp.spawn(_ddp_worker, args=(str(tmp_path), str(Path(d) / "init"), out), nprocs=2, join=True)
        out = dict(out)
    for rank in range(2):
        _close(out[rank][1], {n: p.grad for n, p in ref.named_parameters() if p.grad is not None})
        assert out[rank][0]["loss"] == pytest.approx(float(sum(losses).detach()) / 4, rel=1e-6)  # reduce_mean: fp32


def _run(tmp: Path, out: Path, resume: bool = False) -> dict:
    sets = ["train.batch_size=2", "train.images_per_gpu=1", "train.max_iters=4", "train.checkpoint_every=100"]
    cfg = smoke(tmp, *sets, "train.deterministic=true", "eval.tide=false")
    return engine.run(cfg, out, resume=resume)


def test_run_with_accumulation_logs_records_and_resumes(tmp_path, capsys, monkeypatch):
    full = tmp_path / "full"
    metrics = _run(tmp_path, full)
    assert "global batch 2 = 1 process × 1 images × 2 accumulation steps; BN statistics over 1 images per step" in (
        capsys.readouterr().err
    )
    assert (metrics["train/accumulation_steps"], metrics["train/images_per_gpu"]) == (2, 1)
    assert json.loads((full / "metrics.json").read_text())["train/accumulation_steps"] == 2
    saved = yaml.safe_load((full / "config.yaml").read_text())["train"]
    assert (saved["batch_size"], saved["images_per_gpu"]) == (2, 1)

    # stopped (checkpoint written) after step 2, resumed: the same steps as the uninterrupted run
    calls = iter(range(1, 100))
    monkeypatch.setattr(trainer.preempt, "stop_requested", lambda: next(calls) == 2)
    cut = tmp_path / "cut"
    with pytest.raises(trainer.preempt.Preempted):
        _run(tmp_path, cut)
    monkeypatch.undo()
    _run(tmp_path, cut, resume=True)
    assert (cut / "history.csv").read_text() == (full / "history.csv").read_text()
    a, b = (torch.load(d / "model.pth", weights_only=True) for d in (full, cut))
    assert all(torch.equal(a[k], b[k]) for k in a)
