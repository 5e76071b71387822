"""End-to-end training runs on the synthetic dataset: outputs, learning, kill-and-resume, DDP."""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from studylib import config, engine
from studylib.engine.build import build_datasets, build_model
from studylib.engine.distributed import NaiveSyncBatchNorm, convert_sync_batchnorm
from studylib.engine.optim import build_optimizer

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
SMALL_DATA = "data.synthetic={num_train: 8, num_val: 4, num_unlabeled: 0}"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def smoke(tmp: Path, *sets: str) -> config.ExperimentConfig:
    return config.load(PARAMS, "smoke", [f"data.root={tmp / 'data'}", SMALL_DATA, *sets])


def history(run: Path) -> list[dict]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_smoke_run_writes_every_output(tmp_path):
    out = tmp_path / "run"
    metrics = engine.run(smoke(tmp_path, "train.max_iters=3", "eval.tide=true"), out)
    for name in (
        "metrics.json",
        "config.yaml",
        "load_report.json",
        "history.csv",
        "model.pth",
        "tide.json",
        "coco_results_bbox.json",
        "coco_results_segm.json",
        "checkpoints/last.pth",
    ):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == pytest.approx(metrics, nan_ok=True)
    for task in ("bbox", "segm"):
        for stat in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"):
            assert f"{task}/{stat}" in metrics
    assert metrics["train/iterations"] == 3 and metrics["seed"] == 0
    assert metrics["n_parameters"] > 0 and metrics["train/peak_mem_gb"] > 0
    assert metrics["infer/time_per_image_s"] > 0 and metrics["train/time_s"] > 0
    rows = history(out)
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3]
    assert float(rows[0]["lr"]) < float(rows[1]["lr"])  # warmup
    assert config.load(PARAMS, "smoke").model.backbone == "vit_micro"
    assert (out / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    state = torch.load(out / "model.pth", weights_only=True)
    assert "backbone.vit.blocks.0.attn.qkv.weight" in state


def test_a_few_iterations_reduce_the_loss(tmp_path):
    # overfit 2 images: lr_eff = lr * lr_mult * 2 / 64 = 1e-3
    cfg = smoke(
        tmp_path,
        "train.max_iters=30",
        "data.num_train_images=2",
        "train.lr=0.032",
        "train.lr_mult=1.0",
        "model.drop_path=0.0",
        "train.checkpoint_every=1000",
        "train.warmup_epochs=1.0",
    )
    engine.run(cfg, tmp_path / "run")
    losses = [float(r["loss"]) for r in history(tmp_path / "run")]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def train_cmd(out: Path, data: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "studylib.train",
        "--params",
        str(PARAMS),
        "--experiment",
        "smoke",
        "--out",
        str(out),
        "--set",
        f"data.root={data}",
        "--set",
        SMALL_DATA,
        "--set",
        "train.deterministic=true",
        "--set",
        "train.max_iters=8",
        "--set",
        "train.checkpoint_every=2",
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_and_resume_ends_like_an_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(train_cmd(full, data), check=True, env=ENV, capture_output=True, timeout=600)
    proc = subprocess.Popen(train_cmd(killed, data), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoints" / "last.pth"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stopped_at = torch.load(ckpt, weights_only=True)["iteration"]
    assert 2 <= stopped_at < 8 and not (killed / "metrics.json").exists()
    subprocess.run(train_cmd(killed, data, "--resume"), check=True, env=ENV, capture_output=True, timeout=600)

    a, b = (json.loads((d / "metrics.json").read_text()) for d in (full, killed))
    timing = {"train/time_s", "train/iter_time_s", "train/peak_mem_gb", "infer/time_per_image_s"}
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    assert history(full) == history(killed)  # same losses and lr at every iteration
    wa, wb = (torch.load(d / "model.pth", weights_only=True) for d in (full, killed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# -- DDP: 2 processes (gloo, CPU) with one image each == 1 process with both -----------------------
STEPS = 3


def _setup(tmp: Path, world_size: int):
    """Model, image and target in float64: in float32 the 2-image batch and the 1-image processes round
    differently (~1e-6), which flips ReLUs that sit at ~1e-7 in the RoI head (step-0 gradients then
    differ by up to 4e-3 of their size) and AdamW's first steps (~lr * sign(g)) turn noise-level gradients
    into full-size updates; in float64 both agree to ~1e-13 and the comparison is tight."""
    cfg = smoke(tmp, "model.drop_path=0.0", "train.batch_size=2")
    torch.manual_seed(0)
    train_set, _ = build_datasets(cfg)
    image, target = train_set[0]  # one LSJ draw, the same in every process
    image = image.double()
    target = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in target.items()}
    torch.manual_seed(1)
    model = build_model(cfg, train_set.num_classes).double()
    # take every anchor and RoI: the loss no longer depends on random subsampling
    model.rpn.fg_bg_sampler.batch_size_per_image = 10**6
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 10**6
    lr = engine.effective_lr(cfg.train.lr, cfg.train.lr_mult, cfg.train.batch_size, cfg.train.base_batch_size)
    return cfg, model, lr, image, target


def _steps(model, opt, images, targets) -> tuple[list[float], dict[str, torch.Tensor]]:
    """STEPS AdamW steps; the losses of each and the gradients of the first."""
    losses, grads = [], {}
    for step in range(STEPS):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grads = {n.removeprefix("module."): p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        losses.append(float(loss.detach()))
    return losses, grads


def _ddp_worker(rank: int, tmp: str, init_file: str, out: dict) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    cfg, model, lr, image, target = _setup(Path(tmp), 2)
    model = convert_sync_batchnorm(model, torch.device("cpu"))
    assert any(isinstance(m, NaiveSyncBatchNorm) for m in model.modules())
    model = torch.nn.parallel.DistributedDataParallel(model)
    opt = build_optimizer(model, lr, cfg.train.weight_decay)
    losses, grads = _steps(model, opt, [image], [target])
    out[rank] = (losses, grads, {k: v.clone() for k, v in model.module.state_dict().items()})
    dist.destroy_process_group()


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    cfg, model, lr, image, target = _setup(tmp_path, 1)  # generates the dataset once
    opt = build_optimizer(model, lr, cfg.train.weight_decay)
    ref_losses, ref_grads = _steps(model, opt, [image, image.clone()], [target, copy.deepcopy(target)])
    with tempfile.TemporaryDirectory() as d:
        out = mp.Manager().dict()
        mp.spawn(_ddp_worker, args=(str(tmp_path), str(Path(d) / "init"), out), nprocs=2, join=True)
        out = dict(out)
    # DDP's averaged gradient of the first step equals the 2-image batch's (atol: three biases have a
    # gradient that is 0 but for rounding, ~1e-16)
    assert set(out[0][1]) == set(ref_grads)
    for k, g in ref_grads.items():
        torch.testing.assert_close(out[0][1][k], g, atol=1e-12 + 1e-9 * float(g.abs().max()), rtol=1e-7, msg=k)
    for rank in range(2):
        assert out[rank][0] == pytest.approx(ref_losses, rel=1e-6)  # the same losses at every step
    for k, v in out[0][2].items():
        assert torch.equal(v, out[1][2][k]), k  # the replicas stay identical


@pytest.mark.slow
def test_torchrun_two_processes_end_to_end(tmp_path):
    cmd = engine.torchrun_command(
        PARAMS,
        "smoke",
        tmp_path / "run",
        nproc_per_node=2,
        sets=[f"data.root={tmp_path / 'data'}", SMALL_DATA, "train.max_iters=2", "train.batch_size=2"],
    )
    subprocess.run(cmd, check=True, env=ENV, capture_output=True, timeout=600)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train/world_size"] == 2 and metrics["train/global_batch"] == 2
    assert len(history(tmp_path / "run")) == 2


def test_torchrun_command_lines():
    one = engine.torchrun_command("p.yaml", "mae", "out", ["train.epochs=50"], nproc_per_node=8)
    assert one[1:5] == ["-m", "torch.distributed.run", "--nproc-per-node=8", "--standalone"]
    assert one[-6:] == ["--experiment", "mae", "--out", "out", "--set", "train.epochs=50"]
    many = engine.launch_torchrun(
        "p.yaml", "mae", "out", nproc_per_node=8, nnodes=4, rdzv_endpoint="h:29400", resume=True, dry_run=True
    )
    assert "--nnodes=4" in many and "--rdzv-endpoint=h:29400" in many and many[-1] == "--resume"
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        engine.torchrun_command("p.yaml", "mae", "out", nnodes=2)
