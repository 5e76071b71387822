"""Where a run executes: here (one process, or torchrun's processes) or as a SLURM job (submitit).

    metrics = launch.train("params.yaml", "main", "runs/main/mae-main-s0", sets)          # STUDYLIB_LAUNCHER
    metrics = launch.train(..., launcher="slurm", cluster="cluster.yaml")

The launcher comes from the argument, else the STUDYLIB_LAUNCHER environment variable (set by
`python -m studylib.repro --launcher slurm` for every stage it starts), else "local"; SLURM's
options from cluster.yaml (`options`). Neither is a DVC param: a run computes the same wherever
it executes, so switching re-runs nothing. Modules: `options` (cluster.yaml), `slurm` (submit,
wait, re-attach, requeue), `record` (OUT/launch.json), `stage` (the DVC stage: resume only its
same computation).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from . import record, stage
from .options import ENV_CLUSTER, SlurmOptions, cluster_file
from .options import load as load_options

LAUNCHERS = ("local", "slurm")
ENV_LAUNCHER = "STUDYLIB_LAUNCHER"

__all__ = [
    "ENV_CLUSTER",
    "ENV_LAUNCHER",
    "LAUNCHERS",
    "SlurmOptions",
    "choose",
    "cluster_file",
    "load_options",
    "pretrain",
    "train",
]


def choose(name: str | None = None) -> str:
    """The launcher in use: `name`, else $STUDYLIB_LAUNCHER, else 'local'."""
    chosen = name or os.environ.get(ENV_LAUNCHER) or "local"
    if chosen not in LAUNCHERS:
        source = "--launcher" if name else ENV_LAUNCHER
        raise ValueError(f"{source} = {chosen!r}; allowed: {', '.join(LAUNCHERS)}")
    return chosen


def _local(out_dir: Path, tasks: int, nodes: int, resume: bool, request: str, start_iter, run):
    """`run()` here, recorded in OUT/launch.json as one attempt."""
    record.start(
        out_dir,
        {
            "launcher": "local" if tasks == 1 else "torchrun",
            "job_id": None,
            "nodes": nodes,
            "tasks": tasks,
            "request": request,
        },
        keep=resume,
    )
    record.begin_attempt(out_dir, None, start_iter() if resume else 0)
    try:
        result = run()
    except BaseException:
        record.end_attempt(out_dir, "FAILED")
        raise
    record.end_attempt(out_dir, "COMPLETED")
    return result


def train(
    params: str | Path,
    experiment: str,
    out_dir: str | Path,
    sets: Sequence[str] = (),
    resume: bool = False,
    launcher: str | None = None,
    cluster: str | Path | None = None,
    nproc_per_node: int = 1,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
) -> dict[str, Any]:
    """Train `experiment` (with `sets`) into `out_dir` on the chosen launcher; the run's metrics.

    local: in this process, or torchrun with `nproc_per_node` x `nnodes` processes (study.launch);
    slurm: a job laid out by the cluster options (which then decide the processes)."""
    out = Path(out_dir)
    if choose(launcher) == "slurm":
        from . import slurm

        try:
            return slurm.train(params, experiment, out, list(sets), resume, load_options(cluster))
        except slurm.LaunchError as e:
            if "OutOfMemoryError" in e.traceback:  # as a local run reports it (Table 3: a result)
                import torch

                raise torch.OutOfMemoryError(str(e)) from e
            raise
    from .. import config, engine

    cfg = config.load(params, experiment, list(sets))
    request, persistent = stage.request(out, stage.config_key(cfg))
    if persistent:  # a DVC output kept between runs: resume (or take) the same computation, else start clean
        rec = record.read(out) or {}
        if rec.get("request") != request:
            stage.empty(out)
        elif rec.get("state") == "COMPLETED" and (out / "metrics.json").is_file():
            return json.loads((out / "metrics.json").read_text())
        else:
            resume = True
    if nproc_per_node > 1 or nnodes > 1:

        def run() -> dict[str, Any]:
            engine.launch_torchrun(
                params, experiment, out, list(sets), nproc_per_node, nnodes, rdzv_endpoint=rdzv_endpoint, resume=resume
            )
            return json.loads((out / "metrics.json").read_text())
    else:

        def run() -> dict[str, Any]:
            return engine.run(cfg, out, resume=resume)

    from .slurm import checkpoint_iteration

    return _local(out, nproc_per_node * nnodes, nnodes, resume, request, lambda: checkpoint_iteration(out), run)


def pretrain(
    method: str,
    images: str | Path,
    out_path: str | Path,
    cfg,
    ann_file: str | Path | None = None,
    launcher: str | None = None,
    cluster: str | Path | None = None,
) -> dict[str, Any]:
    """One local pre-training run (studylib.pretrain.run) here or as a one-task SLURM job; its summary."""
    if choose(launcher) == "slurm":
        from . import slurm

        return slurm.pretrain(method, images, out_path, cfg, ann_file, load_options(cluster))
    from .. import pretrain as pretraining

    return pretraining.run(method, images, out_path, cfg, ann_file=ann_file)
