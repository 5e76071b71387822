"""Training engine: one fine-tuning run in one process (`run`) or many (`launch_torchrun` -> DDP).

    metrics = studylib.engine.run(cfg, "results/smoke")                 # in process, one device
    cmd = studylib.engine.launch_torchrun("params.yaml", "mae", "results/mae", nproc_per_node=8)

Modules: `schedule` (warmup + half-period cosine), `optim` (parameter groups, layer decay),
`distributed` (process group, SyncBN, sharded batches), `checkpoint` (atomic save/resume),
`build` (config -> data and model), `inference` (val-set AP), `trainer` (the loop).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from ..config import ExperimentConfig
from .distributed import cleanup, init_distributed
from .optim import build_optimizer, effective_lr, param_groups
from .schedule import build_scheduler, lr_factor, num_iterations, warmup_iterations


def run(cfg: ExperimentConfig, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate `cfg` into `out_dir` (see `trainer`); returns the metrics written to metrics.json.

    Under torchrun (WORLD_SIZE > 1) this process joins the group and trains its shard.
    """
    import torch.distributed as dist

    from .trainer import train

    joined_here = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(cfg.train.device)
    try:
        return train(cfg, out_dir, info, resume=resume)
    finally:
        if joined_here:
            cleanup()


def torchrun_command(
    params: str | Path,
    experiment: str,
    out_dir: str | Path,
    sets: Sequence[str] = (),
    nproc_per_node: int = 1,
    nnodes: int = 1,
    node_rank: int | None = None,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "studylib",
    resume: bool = False,
    python: str = sys.executable,
) -> list[str]:
    """The `torchrun ... -m studylib.train ...` command line (one node: --standalone; many: c10d rendezvous)."""
    if nproc_per_node < 1 or nnodes < 1:
        raise ValueError(f"nproc_per_node = {nproc_per_node} and nnodes = {nnodes} must be >= 1")
    cmd = [python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1:
        cmd.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise ValueError(f"nnodes = {nnodes} needs rdzv_endpoint='host:port' (the same on every node)")
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id}"]
        if node_rank is not None:
            cmd.append(f"--node-rank={node_rank}")
    cmd += ["-m", "studylib.train", "--params", str(params), "--experiment", experiment, "--out", str(out_dir)]
    for s in sets:
        cmd += ["--set", s]
    if resume:
        cmd.append("--resume")
    return cmd


def launch_torchrun(
    params: str | Path,
    experiment: str,
    out_dir: str | Path,
    sets: Sequence[str] = (),
    nproc_per_node: int = 1,
    nnodes: int = 1,
    dry_run: bool = False,
    **kwargs,
) -> list[str]:
    """Run `torchrun_command(...)` as a subprocess (output streamed) and wait; raises CalledProcessError on failure.

    `dry_run=True` only returns the command. Keyword arguments go to `torchrun_command`.
    """
    cmd = torchrun_command(params, experiment, out_dir, sets, nproc_per_node, nnodes, **kwargs)
    if not dry_run:
        print("$", shlex.join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
    return cmd


__all__ = [
    "build_optimizer",
    "build_scheduler",
    "effective_lr",
    "launch_torchrun",
    "lr_factor",
    "num_iterations",
    "param_groups",
    "run",
    "torchrun_command",
    "warmup_iterations",
]
