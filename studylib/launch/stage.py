"""The DVC stage a run executes in (DVC sets DVC_STAGE and DVC_ROOT for a stage's command).

A training stage keeps its run folder between `dvc repro`s (`persist: true` in dvc.yaml) so that a
stage re-run after the login node died can re-attach to its SLURM job, or resume from the job's
checkpoint. That is safe only for the very same computation: `fingerprint` is DVC's own view of the
stage (its command and the hashes of every dependency and param), recorded with the run and compared
on the next start; any difference and the folder is emptied first, as DVC would have done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stage:
    name: str
    fingerprint: str
    persistent: tuple[Path, ...]  # the stage's `persist: true` outputs, absolute


def current() -> Stage | None:
    """The stage this process runs in, or None outside `dvc repro`."""
    name, root = os.environ.get("DVC_STAGE"), os.environ.get("DVC_ROOT")
    if not name or not root:
        return None
    from dvc.repo import Repo

    with Repo(root) as repo:
        stage = next((s for s in repo.index.stages if s.addressing == name), None)
        if stage is None:
            return None
        deps = []
        for dep in stage.deps:
            h = dep.get_hash()
            deps.append([dep.def_path, h.name if h else None, h.value if h else None])
        persistent = tuple(Path(root, o.def_path).resolve() for o in stage.outs if o.persist)
    text = json.dumps([stage.cmd, sorted(deps, key=lambda d: d[0])], sort_keys=True, default=str)
    return Stage(name, hashlib.sha256(text.encode()).hexdigest(), persistent)


def config_key(cfg) -> str:
    """What a run computes, as far as its resolved config says."""
    return hashlib.sha256(json.dumps(cfg.flat(), sort_keys=True, default=str).encode()).hexdigest()


def request(out_dir: Path, key: str) -> tuple[str, bool]:
    """The run's request key -- `key` (its resolved config), with the stage's fingerprint when `out_dir` is a
    persistent output of the current stage -- and whether the folder persists across `dvc repro`."""
    stage = current()
    if stage is None or Path(out_dir).resolve() not in stage.persistent:
        return key, False
    return hashlib.sha256(f"{key}:{stage.fingerprint}".encode()).hexdigest(), True


def empty(out_dir: Path) -> None:
    """Remove everything in `out_dir` (a persistent output about to hold a new computation)."""
    for p in Path(out_dir).iterdir() if Path(out_dir).is_dir() else ():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
