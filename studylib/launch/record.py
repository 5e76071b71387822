"""OUT/launch.json: where and how a run executed, one entry per start (attempt).

    {"launcher": "slurm", "job_id": "123", "nodes": 8, "tasks": 64, "log": "OUT/slurm/123_0_log.err",
     "request": "<sha256 of the resolved config>", "state": "COMPLETED",
     "attempts": [{"job_id": "123", "host": "node-01", "start_iter": 0, "state": "PREEMPTED"},
                  {"job_id": "123", "host": "node-07", "start_iter": 1500, "state": "COMPLETED"}]}

The waiting command (login node) and the job (rank 0 of each attempt) both write it; a file lock
orders them, and every write is atomic (studylib.io).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from ..io import atomic_write_json

NAME = "launch.json"
RUNNING = "RUNNING"


def path(out_dir: str | Path) -> Path:
    return Path(out_dir) / NAME


def read(out_dir: str | Path) -> dict[str, Any] | None:
    p = path(out_dir)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None


def update(out_dir: str | Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read, `change` in place, write back -- under the record's lock."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir / f".{NAME}.lock")):
        rec = read(out_dir) or {"attempts": []}
        change(rec)
        atomic_write_json(path(out_dir), rec)
    return rec


def start(out_dir: str | Path, fields: dict[str, Any], keep: bool = True) -> dict[str, Any]:
    """A new launch: the launcher's fields; `keep`: after the attempts so far (a resumed run), else
    a new record."""

    def change(rec: dict[str, Any]) -> None:
        if not keep:
            rec.clear()
            rec["attempts"] = []
        rec.update(fields)
        rec["state"] = "PENDING"

    return update(out_dir, change)


def begin_attempt(out_dir: str | Path, job_id: str | None, start_iter: int) -> None:
    """This process starts (or restarts) the run at `start_iter`; an earlier attempt still marked
    RUNNING was stopped without a word (requeue, node failure) and is marked REQUEUED."""

    def change(rec: dict[str, Any]) -> None:
        for a in rec.setdefault("attempts", []):
            if a.get("state") == RUNNING:
                a["state"] = "REQUEUED"
        rec["attempts"].append(
            {
                "job_id": job_id,
                "host": socket.gethostname(),
                "start_iter": start_iter,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "state": RUNNING,
            }
        )
        rec["state"] = RUNNING

    update(out_dir, change)


def end_attempt(out_dir: str | Path, state: str, final: bool = True) -> None:
    """The running attempt ended in `state` (COMPLETED, FAILED, PREEMPTED, ...); `final`: so did the run."""

    def change(rec: dict[str, Any]) -> None:
        running = [a for a in rec.get("attempts", []) if a.get("state") == RUNNING]
        if running:
            running[-1].update(state=state, ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
        rec["state"] = state if final else "PENDING"

    update(out_dir, change)
