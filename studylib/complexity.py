"""Model complexity of Table 5: parameters, FLOPs and activations counted at run time, inference fps.

    result = measure(cfg, num_images=2, fps_images=2)                       # random weights
    result = measure(cfg, 100, 10, weights="runs/main/mae-main-s0")          # a trained run's model.pth

FLOPs and activations are counted while the detector runs on real validation images (the counts
depend on the image through the number of proposals and detections), reported as mean ± std.
FLOPs come from `torch.utils.flop_counter.FlopCounterMode`, which counts a multiply-add as 2 FLOPs
(fvcore / detectron2, and so the paper's tables, count it as 1: divide by 2 to compare).
Activations are the output elements of every convolution and linear layer (fvcore's definition,
minus attention's matmuls, which are not modules).

The paper counts trained detectors: the RoI heads' share (the mask head runs once per detection)
depends on how many boxes pass the score threshold, which random weights make a constant (every
box passes, up to the cap). `weights` loads a finished run's final weights (its folder's model.pth)
into the experiment's detector; without it the weights are random and the JSON says `weights: null`.
ViTs run at their square input (padded to img_size², as they were trained); ResNets at the image's
own aspect ratio (longest side img_size), padded only to a multiple of 32 by torchvision's
`GeneralizedRCNNTransform`, as the paper's R101 row.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from .config import ExperimentConfig

ACTIVATION_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
SIZE_DIVISIBLE = 32  # torchvision's default padding of a batch (the ResNet-FPN's coarsest stride)


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
def count_forward(model: nn.Module, image: torch.Tensor) -> tuple[int, int, Any]:
    """(FLOPs, activations, output) of one inference forward on `image` (CHW in [0, 1])."""
    model.eval()
    with activation_counter(model) as acts, FlopCounterMode(display=False) as flops:
        output = model([image])
    return flops.get_total_flops(), acts[0], output


def count_image(model: nn.Module, image: torch.Tensor) -> tuple[int, int]:
    """(FLOPs, activations) of one inference forward on `image` (CHW in [0, 1])."""
    return count_forward(model, image)[:2]


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


@contextmanager
def backbone_inputs(model: nn.Module) -> Iterator[list[tuple[int, int]]]:
    """Yield the list of (height, width) of the batches the backbone sees inside the block (padding included)."""
    sizes: list[tuple[int, int]] = []
    handle = model.backbone.register_forward_pre_hook(lambda _m, args: sizes.append(tuple(args[0].shape[-2:])))
    try:
        yield sizes
    finally:
        handle.remove()


def at_own_aspect_ratio(model: nn.Module, img_size: int) -> nn.Module:
    """`model` (a ResNet Mask R-CNN) resizing each image to longest side `img_size` at its own aspect ratio and
    padding it to a multiple of 32 only (torchvision's transform), instead of the square the ViTs need."""
    t = model.transform
    model.transform = GeneralizedRCNNTransform(img_size, img_size, t.image_mean, t.image_std, SIZE_DIVISIBLE)
    return model


def load_weights(model: nn.Module, weights: str | Path, experiment: str) -> Path:
    """Load a finished run's final weights (`weights`: its folder, holding model.pth, or the file) into `model`."""
    path = Path(weights)
    path = path / "model.pth" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"complexity of {experiment!r}: weights {path} not found (a finished run writes model.pth)")
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except RuntimeError as e:
        raise ValueError(f"complexity of {experiment!r}: {path} does not fit its detector: {e}") from None
    return path


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def measure(
    cfg: ExperimentConfig,
    num_images: int = 2,
    fps_images: int = 2,
    device: str | torch.device | None = None,
    weights: str | Path | None = None,
) -> dict[str, Any]:
    """Build `cfg`'s detector (random weights, or a trained run's `weights`) and count it on the first
    validation images."""
    from .engine.build import RESNETS, build_datasets, build_model

    if num_images < 1 or fps_images < 1:
        raise ValueError(f"num_images = {num_images} and fps_images = {fps_images} must be >= 1")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.init.kind != "random":
        raise ValueError(
            f"complexity of {cfg.name!r}: the detector is built without an initialization (trained weights "
            f"come from `weights`); got init.kind = {cfg.init.kind!r}"
        )
    _, val = build_datasets(cfg)
    n = max(num_images, fps_images)
    if len(val) < n:
        raise ValueError(f"complexity of {cfg.name!r}: needs {n} validation images, the set has {len(val)}")
    images = [val[i][0].to(device) for i in range(n)]
    model = build_model(cfg, val.dataset.num_classes if hasattr(val, "dataset") else val.num_classes)
    loaded = load_weights(model, weights, cfg.name) if weights else None
    aspect = cfg.model.backbone in RESNETS
    if aspect:
        at_own_aspect_ratio(model, cfg.data.img_size)
    model.to(device).eval()
    with cpu_threads(cfg.train.threads if device.type == "cpu" else None):
        with backbone_inputs(model) as sizes:
            counts = [count_forward(model, im) for im in images[:num_images]]
        # the counted forwards, on the same first images, are the timing's warm-up (ViT-B at 1024² on one CPU
        # thread: ~26 s a forward, so a separate warm-up image cost that again)
        fps = images_per_second(model, images[:fps_images], device, warmup=0)
        threads = torch.get_num_threads()
    flops = [float(f) for f, _, _ in counts]
    acts = [float(a) for _, a, _ in counts]
    detections = [float(len(out[0]["boxes"])) for _, _, out in counts]
    gflops, gflops_std = mean_std([f / 1e9 for f in flops])
    mact, mact_std = mean_std([a / 1e6 for a in acts])
    dets, dets_std = mean_std(detections)
    return {
        "experiment": cfg.name,
        "backbone": cfg.model.backbone,
        "img_size": cfg.data.img_size,
        "weights": str(loaded) if loaded else None,
        "input": "own aspect ratio, longest side img_size, padded to a multiple of 32" if aspect else "square",
        "input_sizes": [list(hw) for hw in sizes],
        "detections": dets,
        "detections_std": dets_std,
        "gflops_per_image": [f / 1e9 for f in flops],
        "activations_m_per_image": [a / 1e6 for a in acts],
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
