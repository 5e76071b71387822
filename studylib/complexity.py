"""Model complexity of Table 5: parameters, FLOPs and activations counted at run time, inference fps.

    result = measure(cfg, num_images=2, fps_images=2)      # cfg: an ExperimentConfig

FLOPs and activations are counted while the detector runs on real validation images (the counts
depend on the image through the number of proposals and detections), reported as mean ± std.
FLOPs come from `torch.utils.flop_counter.FlopCounterMode`, which counts a multiply-add as 2 FLOPs
(fvcore / detectron2, and so the paper's tables, count it as 1: divide by 2 to compare).
Activations are the output elements of every convolution and linear layer (fvcore's definition,
minus attention's matmuls, which are not modules). The detector is built with random weights:
counts depend on shapes and on how many boxes pass the score threshold, not on the weights' values.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .config import ExperimentConfig

ACTIVATION_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextmanager
def activation_counter(model: nn.Module) -> Iterator[list[int]]:
    """Yield a one-element list holding the output elements of conv / linear layers run inside the block."""
    total = [0]

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            total[0] += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, ACTIVATION_LAYERS)]
    try:
        yield total
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def count_image(model: nn.Module, image: torch.Tensor) -> tuple[int, int]:
    """(FLOPs, activations) of one inference forward on `image` (CHW in [0, 1])."""
    model.eval()
    with activation_counter(model) as acts, FlopCounterMode(display=False) as flops:
        model([image])
    return flops.get_total_flops(), acts[0]


@torch.no_grad()
def images_per_second(model: nn.Module, images: list[torch.Tensor], device: torch.device, warmup: int = 1) -> float:
    """Inference throughput, one image per forward (as the paper's fps), after `warmup` untimed forwards."""
    model.eval()
    for image in images[:warmup]:
        model([image])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for image in images:
        model([image])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(images) / (time.perf_counter() - t0)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def measure(
    cfg: ExperimentConfig, num_images: int = 2, fps_images: int = 2, device: str | torch.device | None = None
) -> dict[str, Any]:
    """Build `cfg`'s detector (random weights) and count it on the first validation images."""
    from .engine.build import build_datasets, build_model

    if num_images < 1 or fps_images < 1:
        raise ValueError(f"num_images = {num_images} and fps_images = {fps_images} must be >= 1")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.init.kind != "random":
        raise ValueError(f"complexity of {cfg.name!r}: counts use random weights; got init.kind = {cfg.init.kind!r}")
    _, val = build_datasets(cfg)
    n = max(num_images, fps_images)
    if len(val) < n:
        raise ValueError(f"complexity of {cfg.name!r}: needs {n} validation images, the set has {len(val)}")
    images = [val[i][0].to(device) for i in range(n)]
    model = build_model(cfg, val.dataset.num_classes if hasattr(val, "dataset") else val.num_classes).to(device)
    with cpu_threads(cfg.train.threads if device.type == "cpu" else None):
        counts = [count_image(model, im) for im in images[:num_images]]
        fps = images_per_second(model, images[:fps_images], device)
        threads = torch.get_num_threads()
    flops = [float(f) for f, _ in counts]
    acts = [float(a) for _, a in counts]
    gflops, gflops_std = mean_std([f / 1e9 for f in flops])
    mact, mact_std = mean_std([a / 1e6 for a in acts])
    return {
        "experiment": cfg.name,
        "backbone": cfg.model.backbone,
        "img_size": cfg.data.img_size,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "params_m": count_parameters(model) / 1e6,
        "gflops": gflops,
        "gflops_std": gflops_std,
        "flops_convention": "multiply-add = 2 FLOPs",
        "activations_m": mact,
        "activations_m_std": mact_std,
        "fps": fps,
        "num_images": num_images,
        "fps_images": fps_images,
        "threads": threads,
    }


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` torch threads (None: unchanged), as the trainer does with `train.threads`.

    A stage beside another one on a 2-core machine with 2 threads each measured 0.43 fps for the
    embedded detector instead of 16 at one thread: an oversubscribed core distorts every timing."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
