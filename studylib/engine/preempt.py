"""Save-then-stop on a scheduler's warning: the trainer's hook for pre-emption and time limits.

A launcher that gets a warning before its job is stopped (SLURM's `--signal`, which submitit
turns into a checkpoint-and-requeue) calls `request()`. The training loop calls `stop_requested()`
once per iteration; every process of a DDP run gets the same answer (one all-reduce), so all of
them write the checkpoint at the same iteration and raise `Preempted`. Nothing here is active
unless a launcher called `arm()`: a plain run never pays for the all-reduce.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

POLL_WINDOW_S = 60.0  # a loop that has not polled for this long is not training (data, evaluation)

_state = {"armed": False, "requested": False, "last_poll": None}


class Preempted(Exception):
    """Training stopped at `iteration` after writing its checkpoint there."""

    def __init__(self, iteration: int):
        super().__init__(f"stopped at iteration {iteration} (checkpoint written) for a requeue")
        self.iteration = iteration


def arm() -> None:
    _state.update(armed=True, requested=False, last_poll=None)


def disarm() -> None:
    _state.update(armed=False, requested=False, last_poll=None)


def request() -> bool:
    """Ask the training loop to save and stop; True when a loop is polling and will do it."""
    _state["requested"] = True
    last = _state["last_poll"]
    return _state["armed"] and last is not None and time.monotonic() - last < POLL_WINDOW_S


def stop_requested() -> bool:
    """True (on every process) when any process was asked to stop; False at once when not armed."""
    if not _state["armed"]:
        return False
    _state["last_poll"] = time.monotonic()
    flag = _state["requested"]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        t = torch.tensor([float(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flag = bool(t.item())
    return flag
