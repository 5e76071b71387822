"""Time and peak memory of a full Mask R-CNN training step and of inference, ViT vs ResNet backbones.

    python benchmarks/train_step.py                     # the embedded size on CPU -> results/train_step_cpu.json
    python benchmarks/train_step.py --device cuda       # 1024² ViT-B vs ResNet-50 on a GPU (bf16 autocast)

The reference measured in the same run is the ResNet-50 FPN baseline (the paper's CNN comparison):
the JSON gives each backbone's times and their ratio to it. Not a pytest test.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from studylib import config  # noqa: E402
from studylib.engine.build import build_model  # noqa: E402
from studylib.engine.inference import autocast  # noqa: E402
from studylib.engine.optim import build_optimizer  # noqa: E402

SIZES = {  # device -> (img_size, batch, {name: (backbone, overrides)}, head_width, fc_dim)
    "cpu": (128, 2, {"vit_micro": ("vit_micro", {}), "resnet50": ("resnet50", {})}, 64, 256),
    "cuda": (1024, 2, {"vit_base": ("vit_base", {}), "resnet50": ("resnet50", {})}, 256, 1024),
}


def synthetic_batch(n: int, size: int, num_classes: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, size, size, generator=g).to(device))
        k = 4
        xy = torch.rand(k, 2, generator=g) * size * 0.6
        wh = torch.rand(k, 2, generator=g) * size * 0.3 + size * 0.05
        boxes = torch.cat([xy, xy + wh], 1).clamp(max=size - 1)
        masks = torch.zeros(k, size, size, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        targets.append(
            {
                "boxes": boxes.to(device),
                "labels": torch.randint(1, num_classes + 1, (k,), generator=g).to(device),
                "masks": masks.to(device),
            }
        )
    return images, targets


def peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(
    name: str,
    backbone: str,
    overrides: dict,
    device: torch.device,
    img_size: int,
    batch: int,
    head: int,
    fc: int,
    warmup: int,
    iters: int,
    amp: str,
) -> dict:
    cfg = config.load(
        config.read_params(Path(__file__).resolve().parents[1] / "params.yaml"),
        "baseline",
        [f"model.backbone={backbone}", f"data.img_size={img_size}", f"model.head_width={head}", f"model.fc_dim={fc}"],
    )
    cfg.model.overrides = overrides
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=4).to(device)
    opt = build_optimizer(model, 1e-4, 0.1)
    images, targets = synthetic_batch(batch, img_size, 4, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    times = []
    for i in range(warmup + iters):
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, amp):
            loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    train_peak = peak_gb(device)
    model.eval()
    inf = []
    with torch.no_grad():
        for i in range(warmup + iters):
            sync(device)
            t0 = time.perf_counter()
            with autocast(device, amp):
                model(images)
            sync(device)
            if i >= warmup:
                inf.append(time.perf_counter() - t0)
    return {
        "backbone": name,
        "img_size": img_size,
        "batch": batch,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "train_step_s": statistics.median(times),
        "train_step_s_all": times,
        "train_images_per_s": batch / statistics.median(times),
        "train_peak_mem_gb": train_peak,
        "infer_batch_s": statistics.median(inf),
        "infer_images_per_s": batch / statistics.median(inf),
        "peak_mem_gb_after_infer": peak_gb(device),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    img_size, batch, backbones, head, fc = SIZES[device.type]
    amp = "bf16" if device.type == "cuda" else "none"
    rows = [
        bench(n, b, o, device, img_size, batch, head, fc, args.warmup, args.iters, amp)
        for n, (b, o) in backbones.items()
    ]
    ref = next(r for r in rows if r["backbone"] == "resnet50")
    for r in rows:
        r["train_step_vs_resnet50"] = r["train_step_s"] / ref["train_step_s"]
        r["infer_vs_resnet50"] = r["infer_batch_s"] / ref["infer_batch_s"]
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU {platform.processor() or platform.machine()}"
    )
    result = {
        "device": device_name,
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "amp": amp,
        "reference": "resnet50 (same run)",
        "peak_mem": "CUDA: max allocated per backbone; CPU: the process's peak RSS so far (cumulative over rows)",
        "results": rows,
    }
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"train_step_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(
            f"{r['backbone']:>10}: train {r['train_step_s']:.3f} s/step ({r['train_images_per_s']:.1f} img/s, "
            f"x{r['train_step_vs_resnet50']:.2f} of ResNet-50), infer {r['infer_images_per_s']:.1f} img/s, "
            f"peak {r['train_peak_mem_gb']:.2f} GB"
        )
    return result


if __name__ == "__main__":
    main()
