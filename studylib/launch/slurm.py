"""Runs as SLURM jobs through submitit: submit, wait (or re-attach), requeue-and-resume.

A fine-tuning run is one job of `nodes x tasks_per_node` tasks; every task is one DDP process
(rendezvous from SLURM's variables via submitit's TorchDistributedEnvironment). The job's stdout
and stderr are OUT/slurm/<job>_<task>_log.{out,err} (submitit's files; appended across attempts)
and OUT/launch.json records the job and each attempt (`record`).

Every attempt after the first resumes from OUT/checkpoints/last.pth, so a job that SLURM requeues,
pre-empts or stops at its time limit continues exactly where its last checkpoint left it. Where
SLURM warns first (`--signal=USR2@signal_delay_s`, set by submitit), the trainer writes a
checkpoint at its next iteration (`engine.preempt`) before submitit requeues the job.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import record, stage
from .options import SlurmOptions

LOG_DIR = "slurm"
FINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


class LaunchError(RuntimeError):
    """A job that failed for good: the message names its id and its log."""

    def __init__(self, message: str, job_id: str, log: Path, traceback: str = ""):
        super().__init__(message)
        self.job_id, self.log, self.traceback = job_id, log, traceback


def unavailable() -> str | None:
    """Why SLURM cannot take jobs from here (None: it can)."""
    if shutil.which("sbatch") is None:
        return "no `sbatch` on PATH (SLURM is not installed here)"
    r = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
    if r.returncode:
        return f"`squeue` fails: {r.stderr.strip() or r.returncode} (no SLURM controller reachable)"
    return None


def job_state(job_id: str) -> str | None:
    """The job's state from squeue, else from `scontrol show job` (no accounting needed); None: unknown."""
    r = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True)
    if r.returncode == 0 and r.stdout.strip():
        return r.stdout.split()[0]
    r = subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True)
    for word in r.stdout.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return None


def log_paths(folder: Path, job_id: str, task: int = 0):
    from submitit.core.utils import JobPaths

    return JobPaths(folder, job_id=str(job_id), task_id=task)


def executor(folder: Path, opts: SlurmOptions, name: str):
    """A submitit SlurmExecutor with the cluster options (tasks = one DDP process each)."""
    import submitit

    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=opts.max_timeouts)
    params: dict[str, Any] = dict(
        job_name=name,
        nodes=opts.nodes,
        ntasks_per_node=opts.ntasks_per_node,
        cpus_per_task=opts.cpus_per_task,
        time=opts.time_min,
        signal_delay_s=opts.signal_delay_s,
        additional_parameters=dict(opts.sbatch),
        setup=list(opts.setup),
    )
    if opts.gpus_per_node:
        params["gpus_per_node"] = opts.gpus_per_node
    if opts.mem_gb is not None:
        params["mem"] = f"{int(opts.mem_gb * 1024)}M"
    for key in ("partition", "account", "qos"):
        if getattr(opts, key):
            params[key] = getattr(opts, key)
    ex.update_parameters(**params)
    return ex


class Task:
    """What every job runs: the distributed environment, the attempt record, save-then-requeue.

    Subclasses give `body(resume)` (the run itself) and `start_iter()` (where a resume starts).
    `checkpoint()` makes submitit's requeue on a time limit or pre-emption resume."""

    out_dir: Path
    resume: bool

    def body(self, resume: bool) -> Any:
        raise NotImplementedError

    def start_iter(self) -> int:
        raise NotImplementedError

    def forget(self) -> None:
        """Remove resume state an earlier, different run left in the folder."""

    def checkpoint(self, *args: Any, **kwargs: Any):
        from submitit.helpers import DelayedSubmission

        self.resume = True
        return DelayedSubmission(self)

    def __call__(self) -> Any:
        import submitit
        from submitit.helpers import TorchDistributedEnvironment

        from ..engine import preempt

        env = submitit.JobEnvironment()
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        resume = self.resume or int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0
        main = env.global_rank == 0
        if main:
            record.begin_attempt(self.out_dir, env.job_id, self.start_iter() if resume else 0)
        warn = signal.getsignal(env._usr_sig())  # submitit's checkpoint-and-requeue handler

        def on_warning(signum, frame):  # save first when the training loop can, else requeue now
            if not preempt.request():
                warn(signum, frame)

        signal.signal(env._usr_sig(), on_warning)
        preempt.arm()
        try:
            result = self.body(resume)
        except preempt.Preempted:
            if main:
                record.end_attempt(self.out_dir, "PREEMPTED", final=False)
            warn(env._usr_sig(), None)  # rank 0: checkpoint() and `scontrol requeue`, then exit
            return None
        except Exception:
            if main:
                record.end_attempt(self.out_dir, "FAILED")
            raise
        finally:
            preempt.disarm()
        if main:
            record.end_attempt(self.out_dir, "COMPLETED")
        return result


def checkpoint_iteration(out_dir: Path) -> int:
    """The iteration OUT/checkpoints/last.pth resumes at (0: none); memory-mapped, so cheap at any size."""
    from ..engine.checkpoint import checkpoint_path

    ckpt = checkpoint_path(out_dir)
    if not ckpt.is_file():
        return 0
    import torch

    return int(torch.load(ckpt, map_location="cpu", mmap=True, weights_only=True)["iteration"])


class TrainTask(Task):
    """`python -m studylib.train` in a job: engine.run on every task."""

    def __init__(self, params: str, experiment: str, out_dir: str | Path, sets: list[str], resume: bool):
        self.params, self.experiment, self.sets = str(params), experiment, list(sets)
        self.out_dir, self.resume = Path(out_dir), resume

    def forget(self) -> None:
        from ..engine.checkpoint import checkpoint_path

        checkpoint_path(self.out_dir).unlink(missing_ok=True)

    def start_iter(self) -> int:
        return checkpoint_iteration(self.out_dir)

    def body(self, resume: bool) -> dict[str, Any]:
        from .. import config, engine

        cfg = config.load(self.params, self.experiment, self.sets)
        metrics = engine.run(cfg, self.out_dir, resume=resume)
        return metrics if int(os.environ.get("RANK", "0")) == 0 else None


def cancel_orphans(folder: Path) -> list[str]:
    """Cancel the live jobs submitted from `folder` (squeue's command path): an earlier job of this run folder
    whose record is gone (DVC removed the folder) or is for another request must not write into the new run."""
    r = subprocess.run(["squeue", "-h", "-o", "%i|%o"], capture_output=True, text=True)
    prefix = f"{Path(folder).resolve()}/"
    ids = [line.split("|", 1)[0] for line in r.stdout.splitlines() if line.partition("|")[2].startswith(prefix)]
    for job_id in ids:
        subprocess.run(["scancel", job_id], check=False)
        print(f"[slurm] cancelled job {job_id}: an earlier run in {folder.parent}", file=sys.stderr, flush=True)
    return ids


def submit(task: Task, opts: SlurmOptions, name: str, request: str) -> str:
    """Submit `task` as one job; write the launch record (before the job can start); return the job id."""
    folder = task.out_dir / LOG_DIR
    cancel_orphans(folder)
    record.start(
        task.out_dir,
        {
            "launcher": "slurm",
            "job_id": None,
            "nodes": opts.nodes,
            "tasks": opts.tasks,
            "tasks_per_node": opts.ntasks_per_node,
            "gpus_per_node": opts.gpus_per_node,
            "partition": opts.partition,
            "request": request,
        },
        keep=task.resume,
    )
    job_id = executor(folder, opts, name).submit(task).job_id
    log = log_paths(folder, job_id).stderr
    record.update(
        task.out_dir, lambda rec: rec.update(job_id=job_id, log=str(log), stdout=str(log_paths(folder, job_id).stdout))
    )
    print(
        f"[slurm] submitted job {job_id} ({opts.nodes} node(s) x {opts.ntasks_per_node} task(s)); log: {log}",
        file=sys.stderr,
        flush=True,
    )
    return job_id


def _result(folder: Path, job_id: str, tasks: int) -> tuple[str, Any, Path] | None:
    """('success' | 'error', value, log) once task 0 (or any failed task) has left its result file."""
    from submitit.core.utils import pickle_load

    for t in range(tasks):
        paths = log_paths(folder, job_id, t)
        if paths.result_pickle.exists():
            outcome, value = pickle_load(paths.result_pickle)
            if outcome != "success" or t == 0:
                return outcome, value, paths.stderr
    return None


def wait(
    out_dir: Path,
    job_id: str,
    tasks: int,
    poll_s: float,
    echo: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> Any:
    """Wait for the job; its task 0's return value, or LaunchError naming the job and its log."""
    folder = Path(out_dir) / LOG_DIR
    log = log_paths(folder, job_id).stderr
    last = None
    while True:
        done = _result(folder, job_id, tasks)
        if done is not None:
            outcome, value, task_log = done
            if outcome == "success":
                return value
            lines = [ln for ln in str(value).strip().splitlines() if ln.strip()]
            raise LaunchError(
                f"SLURM job {job_id} failed: {lines[-1] if lines else outcome}\n  log: {task_log}",
                job_id,
                task_log,
                str(value),
            )
        state = job_state(job_id)
        if state != last:
            echo(f"[slurm] job {job_id}: {state or 'no longer known to SLURM'}")
            last = state
        if state is None or state in FINAL:
            time.sleep(min(poll_s, 2.0))  # the result file may land just after the job ends
            if _result(folder, job_id, tasks) is None:
                state = state or "UNKNOWN"
                rec = record.read(out_dir) or {}
                if rec.get("state") not in ("COMPLETED", "FAILED"):
                    record.end_attempt(out_dir, state)
                raise LaunchError(
                    f"SLURM job {job_id} ended {state} without finishing the run\n  log: {log}", job_id, log
                )
            continue
        time.sleep(poll_s)


def attach_or_submit(
    task: Task, opts: SlurmOptions, name: str, request: str, persistent: bool = False
) -> tuple[str, int]:
    """Re-attach to this run's job when it is still queued or running (the same request); else submit,
    resuming from the run's checkpoint when an earlier job of the same request left one. A
    `persistent` folder (a DVC output kept between runs, `stage`) of another request is emptied first."""
    rec = record.read(task.out_dir)
    same = bool(rec) and rec.get("launcher") == "slurm" and rec.get("request") == request and rec.get("job_id")
    if same:
        state = job_state(rec["job_id"])
        result = log_paths(task.out_dir / LOG_DIR, rec["job_id"]).result_pickle
        finished = rec.get("state") == "COMPLETED" and result.exists()
        if finished or (state is not None and state not in FINAL):  # its result, or the job that will write it
            print(
                f"[slurm] re-attaching to job {rec['job_id']} ({state or rec.get('state')}); log: {rec.get('log')}",
                file=sys.stderr,
                flush=True,
            )
            return rec["job_id"], int(rec.get("tasks", 1))
        task.resume = True  # resubmitted: continue from the checkpoint it left (if any)
    elif persistent:
        stage.empty(task.out_dir)  # what DVC would have removed before a new computation
    elif not task.resume:
        task.forget()  # never resume another request's state
    return submit(task, opts, name, request), opts.tasks


def train(
    params: str | Path, experiment: str, out_dir: str | Path, sets: list[str], resume: bool, opts: SlurmOptions
) -> dict[str, Any]:
    """One fine-tuning run as a SLURM job (or the job already running it); its metrics."""
    from .. import config

    cfg = config.load(params, experiment, sets)  # bad params fail here, before anything is queued
    task = TrainTask(Path(params).resolve(), experiment, Path(out_dir).resolve(), sets, resume)
    request, persistent = stage.request(task.out_dir, stage.config_key(cfg))
    job_id, tasks = attach_or_submit(task, opts, f"studylib-{cfg.name}", request, persistent)
    return wait(task.out_dir, job_id, tasks, opts.poll_s)


class PretrainTask(Task):
    """`python -m studylib.pretrain` in a one-task job; a requeued attempt resumes from <out>.resume.pth."""

    def __init__(self, method: str, images: str | Path, out_path: str | Path, cfg, ann_file: str | Path | None):
        self.method, self.images, self.out_path, self.cfg = method, str(images), Path(out_path), cfg
        self.ann_file = None if ann_file is None else str(ann_file)
        self.out_dir, self.resume = self.out_path.parent, bool(cfg.resume)

    def _state(self) -> Path:
        from ..pretrain.common import RunPaths

        return RunPaths.of(self.out_path).state

    def start_iter(self) -> int:
        import torch

        state = self._state()
        return (
            int(torch.load(state, map_location="cpu", mmap=True, weights_only=False)["step"]) if state.is_file() else 0
        )

    def body(self, resume: bool) -> dict[str, Any]:
        import dataclasses

        from .. import pretrain

        cfg = dataclasses.replace(self.cfg, resume=resume and self._state().is_file(), progress=False)
        return pretrain.run(self.method, self.images, self.out_path, cfg, ann_file=self.ann_file)


def pretrain(
    method: str, images: str | Path, out_path: str | Path, cfg, ann_file: str | Path | None, opts: SlurmOptions
) -> dict[str, Any]:
    """One local pre-training run as a one-task SLURM job (one GPU if the options have GPUs); its summary."""
    task = PretrainTask(
        method,
        Path(images).resolve(),
        Path(out_path).resolve(),
        cfg,
        None if ann_file is None else Path(ann_file).resolve(),
    )
    one = opts.replace(nodes=1, tasks_per_node=1, gpus_per_node=min(1, opts.gpus_per_node))
    request = hashlib.sha256(json.dumps([method, str(task.images), repr(cfg)], default=str).encode()).hexdigest()
    job_id, tasks = attach_or_submit(task, one, f"studylib-pretrain-{method}", request)
    return wait(task.out_dir, job_id, tasks, one.poll_s)
