"""Atomic training checkpoints: everything a run needs to continue exactly where it stopped.

`DIR/checkpoints/last.pth` holds model, optimizer, scheduler and (fp16) grad-scaler states, the
iteration, the data position (epoch and batch within it) and, for every process, the RNG states
of torch (CPU and CUDA), numpy and random. It is written to a temporary file and renamed, so a run killed at any
moment leaves the previous complete checkpoint in place.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from timm.utils import unwrap_model

from ..io import atomic_torch_save

CHECKPOINT_NAME = "last.pth"


def checkpoint_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints" / CHECKPOINT_NAME


def rng_state() -> dict[str, Any]:
    """RNG states as plain data (loadable with `torch.load(weights_only=True)`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["random"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    iteration: int,
    epoch: int,
    position: int,
    rng: list[dict] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    extra: dict | None = None,
) -> Path:
    """Atomically write the state after `iteration` completed iterations; data resumes at (epoch, position).

    `rng` holds one `rng_state()` per process (rank order); default: this process's only.
    """
    state = {
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "iteration": iteration,
        "epoch": epoch,
        "position": position,
        "rng": rng if rng is not None else [rng_state()],
        "extra": extra or {},
    }
    return atomic_torch_save(path, state)


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler | None = None,
    map_location: str | torch.device = "cpu",
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """Restore a `save_checkpoint` file into the given objects and this rank's RNGs; returns the raw state.

    A checkpoint from a run with another number of processes restores all but the RNGs
    (`state["rng_restored"]` is False then: the caller reseeds).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cannot resume: checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated file cannot come from save_checkpoint, but say which file failed
        raise ValueError(f"checkpoint {path} cannot be read: {e}") from None
    missing = [
        k for k in ("model", "optimizer", "scheduler", "iteration", "epoch", "position", "rng") if k not in state
    ]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}: not written by studylib.engine")
    unwrap_model(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    state["rng_restored"] = len(state["rng"]) == world_size
    if state["rng_restored"]:
        set_rng_state(state["rng"][rank])
    return state
