"""`dvc repro`, with independent stages run side by side.

    python -m studylib.repro --jobs 2 [TARGET ...]

DVC itself runs one stage at a time. It does, however, hold its repository lock only while it
reads and writes its own state (not while a stage's command runs) and takes a read lock on a
stage's dependencies and a write lock on its outputs; so several `dvc repro --single-item STAGE`
processes may run at once as long as none of them needs another's outputs. This module walks
dvc.yaml's stage graph in dependency order and keeps up to `--jobs` such processes running
(`dvc --wait-for-lock`, so two processes never fail on the short repository lock). Everything DVC
does stays DVC's: what is up to date is skipped, dvc.lock records every stage, and a second
`dvc repro` afterwards runs nothing. A stage that fails stops new launches; the stages already
running finish, and the command exits non-zero naming the failed stage(s).

With `--launcher slurm` every stage sees STUDYLIB_LAUNCHER=slurm (and STUDYLIB_CLUSTER, the cluster
options file), so each training run inside it is its own SLURM job (studylib.launch) and `--jobs N`
keeps N jobs queued or running; the stage commands DVC records are the same as with the local
launcher, so switching launcher re-runs nothing.

On 2 CPU cores two single-threaded stages give ~1.5x the throughput of one two-threaded one
(the embedded scale pins `train.threads: 1`), which is why `--jobs 2` is the study's fast path.
The graph comes from DVC's own index (`Repo.index.graph`, edges from a stage to the stages it
depends on) -- not re-derived by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Plan:
    """Stages (DVC addresses) in dependency order and, for each, the stages it waits for."""

    order: list[str]
    needs: dict[str, set[str]] = field(default_factory=dict)


def plan(root: str | Path = ".", targets: list[str] | None = None) -> Plan:
    """The stage graph of the DVC project at `root`, restricted to `targets` and their upstream."""
    import networkx as nx
    from dvc.repo import Repo

    # DVC names stages relative to the working directory: plan from inside the project
    with contextlib.chdir(root), Repo(".") as repo:
        graph = repo.index.graph
        by_name = {stage.addressing: stage for stage in graph.nodes}
        if targets:
            unknown = [t for t in targets if t not in by_name and not any(a.startswith(f"{t}@") for a in by_name)]
            if unknown:
                raise ValueError(f"dvc.yaml: no stage {', '.join(unknown)}; stages: {', '.join(sorted(by_name))}")
            chosen = {a for a in by_name for t in targets if a == t or a.startswith(f"{t}@")}
            keep = set()
            for a in chosen:
                keep |= {a} | {s.addressing for s in nx.descendants(graph, by_name[a])}
        else:
            keep = set(by_name)
        # networkx's order is dependents first (edges point upstream): reverse it.
        order = [s.addressing for s in reversed(list(nx.topological_sort(graph))) if s.addressing in keep]
        needs = {a: {s.addressing for s in graph.successors(by_name[a])} & keep for a in order}
        return Plan(order, needs)


def run(
    root: str | Path = ".",
    jobs: int = 2,
    targets: list[str] | None = None,
    force: bool = False,
    dvc: str = "dvc",
    log=lambda msg: print(msg, flush=True),
    timings: str | Path | None = None,
    launcher: str | None = None,
    cluster: str | Path | None = None,
) -> int:
    """Reproduce the stages of `plan(root, targets)` with up to `jobs` at once; 0 when all succeed.

    `timings`: a JSON file written at the end, {"jobs", "wall_s", "stages": {name: {start_s, end_s, rc}}}
    (seconds from the start; benchmarks/study.py reads it). `launcher`, `cluster`: where the stages'
    training runs execute (studylib.launch), passed to them in the environment."""
    if jobs < 1:
        raise ValueError(f"--jobs = {jobs} must be >= 1")
    env = launch_env(root, launcher, cluster)
    p = plan(root, targets)
    done: set[str] = set()
    failed: list[str] = []
    running: dict[str, subprocess.Popen] = {}
    pending = list(p.order)
    started = time.time()
    spans: dict[str, dict[str, float]] = {}
    while pending or running:
        while not failed and len(running) < jobs:
            ready = next((a for a in pending if p.needs[a] <= done), None)
            if ready is None:
                break
            pending.remove(ready)
            cmd = [dvc, "--wait-for-lock", "repro", "--single-item", ready] + (["--force"] if force else [])
            log(f"[repro] start {ready}  ({len(done)}/{len(p.order)} done, {time.time() - started:.0f}s)")
            running[ready] = subprocess.Popen(cmd, cwd=str(root), env=env)
            spans[ready] = {"start_s": time.time() - started}
        if failed and not running:
            break
        time.sleep(0.2)
        for name, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            spans[name].update(end_s=time.time() - started, rc=proc.returncode)
            if proc.returncode == 0:
                done.add(name)
                log(f"[repro] done  {name}  ({time.time() - started:.0f}s)")
            else:
                failed.append(name)
                log(f"[repro] FAILED {name} (exit {proc.returncode}); waiting for {len(running)} running stage(s)")
    if timings is not None:
        from .io import atomic_write_json

        atomic_write_json(timings, {"jobs": jobs, "wall_s": time.time() - started, "stages": spans})
    if failed:
        skipped = [a for a in p.order if a not in done and a not in failed]
        log(f"[repro] failed: {', '.join(failed)}; not run: {len(skipped)} stage(s)")
        return 1
    log(f"[repro] {len(done)} stage(s) up to date in {time.time() - started:.0f}s")
    return 0


def launch_env(root: str | Path, launcher: str | None, cluster: str | Path | None) -> dict[str, str]:
    """The stages' environment: STUDYLIB_LAUNCHER and STUDYLIB_CLUSTER (an absolute path), checked here."""
    from . import launch

    env = dict(os.environ)
    chosen = launch.choose(launcher)
    env[launch.ENV_LAUNCHER] = chosen
    if chosen == "slurm":
        with contextlib.chdir(root):
            path = launch.cluster_file(cluster)
            launch.load_options(path)  # bad options fail before any stage starts
        if path is not None:
            env[launch.ENV_CLUSTER] = str(Path(root, path).resolve())
        from .launch.slurm import unavailable

        if (why := unavailable()) is not None:
            raise ValueError(f"--launcher slurm: {why}")
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m studylib.repro", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "targets",
        nargs="*",
        help="stages (or stage families, e.g. main) and their upstream; default: every stage of dvc.yaml",
    )
    ap.add_argument("--jobs", "-j", type=int, default=2, help="stages run at once (default 2)")
    ap.add_argument("--force", "-f", action="store_true", help="re-run stages even when up to date")
    ap.add_argument("--root", default=".", help="the DVC project (default: the current folder)")
    ap.add_argument("--timings", help="write each stage's start and end (JSON) to this file")
    ap.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        help="where training runs execute: here (local) or "
        "one SLURM job each (slurm); default: $STUDYLIB_LAUNCHER, else local. Not a DVC param",
    )
    ap.add_argument("--cluster", metavar="YAML", help="SLURM options (default: $STUDYLIB_CLUSTER, else ./cluster.yaml)")
    a = ap.parse_args(argv)
    try:
        return run(
            a.root, a.jobs, a.targets or None, a.force, timings=a.timings, launcher=a.launcher, cluster=a.cluster
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
