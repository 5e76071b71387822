"""Table 3 under torchrun: an out-of-memory error on one process is the run's result, and every process exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from studylib.engine import trainer
from studylib.engine.distributed import DistInfo, OomSignal
from studylib.report import collect, study, tables

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
SETS = ["data.synthetic={num_train: 8, num_val: 4, num_unlabeled: 0}", "train.max_iters=4", "train.batch_size=2"]

# Fault injection for the test only: on rank OOM_RANK, iteration OOM_AT raises CUDA's out-of-memory error from
# the RoI heads, i.e. mid-forward, after the backbone's and FPN's collectives (SyncBN) and before the heads' ones,
# where the other process then waits in a collective this one never joins.
LAUNCHED = """
import os, sys, torch
from studylib.engine import distributed, trainer
from studylib import train

rank, at = int(os.environ["RANK"]), int(os.environ["OOM_AT"])
distributed.PEER_OOM_GRACE_S = float(os.environ.get("OOM_GRACE_S", distributed.PEER_OOM_GRACE_S))
step = trainer.train_step

def fail_in_roi_heads(module, args):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")

def injected(run, images, targets, iteration):
    if rank == int(os.environ["OOM_RANK"]) and iteration == at:
        trainer.unwrap_model(run.model).roi_heads.register_forward_pre_hook(fail_in_roi_heads)
    return step(run, images, targets, iteration)

trainer.train_step = injected
sys.exit(train.main(sys.argv[1:]))
"""


def torchrun(tmp_path: Path, out: Path, oom_rank: int, at: int, grace_s: float) -> subprocess.CompletedProcess:
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED)
    sets = [f"data.root={tmp_path / 'data'}", *SETS]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    cmd += ["--params", str(REPO / "params.yaml"), "--experiment", "smoke", "--out", str(out)]
    cmd += [a for s in sets for a in ("--set", s)]
    env = {**ENV, "OOM_RANK": str(oom_rank), "OOM_AT": str(at), "OOM_GRACE_S": str(grace_s)}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("oom_rank", [1, 0])
def test_an_oom_on_one_rank_is_the_runs_result_and_every_rank_exits_0(tmp_path, oom_rank):
    run = study.Run("ablations", "attn_x", "smoke", "random")
    out = tmp_path / run.out_dir
    done = torchrun(tmp_path, out, oom_rank=oom_rank, at=2, grace_s=120)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"rank {oom_rank}: out of memory at iteration 2" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "oom" and metrics["rank"] == oom_rank and metrics["iteration"] == 2
    assert "CUDA out of memory" in metrics["error"]
    assert metrics["train/images_per_gpu"] == 1 and metrics["train/world_size"] == 2  # global batch 2 on 2
    assert metrics["train/attention_kernel"].startswith("SDPA ") and metrics["train/attention"] == "hybrid"
    assert not (out / "model.pth").exists()  # the run stopped at iteration 2

    m = collect.read_run(tmp_path, run)
    row = collect._attention_row(m, attention=metrics["train/attention"], checkpointing=False)
    assert row["images_per_gpu"] == 1 and row["attention_kernel"] == metrics["train/attention_kernel"]
    table = tables.attention_table({"attn_x": row})
    got = table.iloc[0]
    assert got["AP box"] == "OOM" and got["images / GPU"] == 1 and got["attention kernel"].startswith("SDPA ")


def test_a_peer_stuck_in_a_collective_exits_0_after_the_grace(tmp_path):
    """The watcher's way out (NCCL: a collective waits on the GPU and never fails): the process leaves with 0."""
    code = f"""
import torch.distributed as dist, time
from studylib.engine.distributed import DistInfo, OomSignal
store = dist.FileStore({str(tmp_path / "store")!r}, 2)
dist.init_process_group("gloo", store=store, rank=1, world_size=2)
signal = OomSignal(DistInfo(1, 2), grace_s=0.5)
signal.store.set("studylib/out_of_memory", "rank 0: CUDA out of memory")
time.sleep(60)  # stands for a collective that never returns
raise SystemExit(3)
"""
    rank0 = subprocess.Popen(
        [sys.executable, "-c", _rank0(tmp_path)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    rank0.wait(timeout=120)
    assert done.returncode == 0, done.stderr
    assert "rank 1: rank 0: CUDA out of memory; this process waits in a collective: exits" in done.stderr


def test_single_process_signal_is_silent():
    signal = OomSignal(DistInfo())
    assert signal.peer() is None and signal.store is None
    signal.publish("out of memory")
    signal.close()


def test_attention_kernel_names_the_sdpa_backend():
    from studylib.models.vit import Attention

    model = torch.nn.Sequential(Attention(32, 2))
    kernel = trainer.attention_kernel(model, torch.device("cpu"), "bf16")
    assert kernel.startswith("SDPA ") and kernel.endswith("(cpu)")
    assert trainer.attention_kernel(torch.nn.Linear(2, 2), torch.device("cpu"), "none") == "none"


def _rank0(tmp_path: Path) -> str:
    return f"""
import torch.distributed as dist, time
store = dist.FileStore({str(tmp_path / "store")!r}, 2)
dist.init_process_group("gloo", store=store, rank=0, world_size=2)
time.sleep(5)
"""


def _smoke(tmp_path: Path, *sets: str):
    from studylib import config

    return config.load(REPO / "params.yaml", "smoke", [f"data.root={tmp_path / 'data'}", *SETS, *sets])


def test_one_process_records_its_oom_and_returns(tmp_path, monkeypatch):
    from studylib import engine

    step = trainer.train_step

    def injected(run, images, targets, iteration):
        if iteration == 3:
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")
        return step(run, images, targets, iteration)

    monkeypatch.setattr(trainer, "train_step", injected)
    metrics = engine.run(_smoke(tmp_path, "train.threads=1"), tmp_path / "run")
    assert metrics == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "oom" and metrics["iteration"] == 3 and metrics["rank"] == 0
    assert metrics["train/images_per_gpu"] == 2 and metrics["train/world_size"] == 1
    assert not (tmp_path / "run" / ".run.lock").exists()


def test_training_peak_memory_leaves_out_evaluation(tmp_path, monkeypatch):
    """A fake allocator: each training step peaks at 1 GB, an evaluation at 100 GB, setup at 50 GB."""
    from studylib import engine

    peak = [50.0]
    step, evaluate = trainer.train_step, trainer.evaluate

    def train_step(*args):
        peak[0] = max(peak[0], 1.0)
        return step(*args)

    def evaluating(*args, **kwargs):
        peak[0] = 100.0
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", train_step)
    monkeypatch.setattr(trainer, "evaluate", evaluating)
    monkeypatch.setattr(trainer, "peak_memory_gb", lambda device: peak[0])
    monkeypatch.setattr(trainer, "reset_peak_memory", lambda device: peak.__setitem__(0, 0.0))
    metrics = engine.run(_smoke(tmp_path, "train.threads=1", "train.eval_every=2"), tmp_path / "run")
    assert "status" not in metrics  # a complete run
    assert metrics["train/peak_mem_gb"] == 1.0
    assert metrics["train/peak_mem_meaning"] == trainer.PEAK_MEM_MEANING["cpu"]
