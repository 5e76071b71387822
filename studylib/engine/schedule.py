"""The paper's learning-rate schedule: linear warmup, then half-period cosine decay to 0.

Schedules are counted in epochs of the training set and turned into iterations here:
iterations = ceil(epochs x num_train_images / global_batch), unless `max_iters` overrides
(100 epochs of COCO at batch 64 = 184,375 iterations; 0.25 warmup epochs = 461 iterations).

The factor at iteration t of T (applied to each parameter group's base lr) is

    cosine(t) = 0.5 * (1 + cos(pi * t / T))                         # 1 -> 0 over the whole run
    warmup(t) = warmup_factor + (1 - warmup_factor) * t / W  if t < W else 1
    factor(t) = warmup(t) * cosine(t)

as detectron2's `WarmupParamScheduler(CosineParamScheduler(1, 0), warmup_length, "linear")` does.
`torch.optim.lr_scheduler.LambdaLR` applies it, so scheduler state resumes with the optimizer.

References: Li et al. 2021 §2.3; detectron2 solver/lr_scheduler.py; MAE util/lr_sched.py.
"""

from __future__ import annotations

import math
from functools import partial

import torch

WARMUP_FACTOR = 0.001  # lr at iteration 0 relative to the base lr (detectron2's default)


def num_iterations(epochs: float, num_images: int, global_batch: int, max_iters: int | None = None) -> int:
    """Total iterations of a schedule of `epochs` over `num_images` at `global_batch` images/iteration."""
    if max_iters is not None:
        if max_iters < 1:
            raise ValueError(f"train.max_iters = {max_iters} must be >= 1")
        return int(max_iters)
    if num_images < 1 or global_batch < 1 or epochs <= 0:
        raise ValueError(f"cannot schedule {epochs} epochs of {num_images} images at batch {global_batch}")
    return max(1, math.ceil(epochs * num_images / global_batch))


def warmup_iterations(warmup_epochs: float, num_images: int, global_batch: int, total: int) -> int:
    """Warmup length in iterations (0.25 epochs in the paper), at most the whole run."""
    if warmup_epochs < 0:
        raise ValueError(f"train.warmup_epochs = {warmup_epochs} must be >= 0")
    return min(total, math.ceil(warmup_epochs * num_images / global_batch))


def lr_factor(iteration: int, total: int, warmup: int, warmup_factor: float = WARMUP_FACTOR) -> float:
    """The multiplier of the base lr at `iteration` (0-based) of `total`; 0 at `iteration == total`."""
    if total < 1:
        raise ValueError(f"total iterations = {total} must be >= 1")
    t = min(max(iteration, 0), total)
    cosine = 0.5 * (1.0 + math.cos(math.pi * t / total))
    if t < warmup:
        alpha = t / warmup
        cosine *= warmup_factor * (1.0 - alpha) + alpha
    return cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer, total: int, warmup: int, warmup_factor: float = WARMUP_FACTOR
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration `LambdaLR` with `lr_factor` (call `.step()` after every optimizer step)."""
    # partial of a module-level function: picklable, and LambdaLR's state_dict stays plain data
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, total=total, warmup=warmup, warmup_factor=warmup_factor)
    )
