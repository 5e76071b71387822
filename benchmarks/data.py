"""Throughput of the training data pipeline (decode + masks + LSJ) per loader worker, beside the
model's training step measured in the same run, at paper scale (1024^2, COCO images) and at the
embedded default (128^2, synthetic shapes).

    python benchmarks/data.py                      # writes benchmarks/results/data_<device>.json
    python benchmarks/data.py --paper-model none   # skip the slow ViT-B step at 1024^2 on CPU

Loader numbers are one process with one torch thread, as a DataLoader worker runs. The reference
for each loader figure is measured in the same run: decode alone, then decode + masks, then the
full pipeline. The model step (forward + backward + AdamW step of Mask R-CNN with the ViT) needs
`studylib.models.build_mask_rcnn`; without it that section is recorded as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from studylib.data import CocoInstances, LargeScaleJitter, collate_fn, read_image  # noqa: E402
from studylib.data.synthetic import SyntheticConfig, generate  # noqa: E402

TINYCOCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinycoco"
WORKERS_PER_GPU = 8  # the paper-scale setting (params.yaml: data.workers)
# Not measured here: ViTDet README, Mask R-CNN ViT-B, 0.314 s/iter with 1 image per A100 (64 GPUs).
GPU_REFERENCE = {
    "source": "detectron2 projects/ViTDet README (A100, 1 image/GPU)",
    "model": "Mask R-CNN ViT-B",
    "images_per_s_per_gpu": round(1 / 0.314, 2),
}


def device_name(device: str) -> str:
    if device == "cuda":
        return f"cuda: {torch.cuda.get_device_name()}"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {cpu}, {os.cpu_count()} cores"


def coco_like(root: Path, num_images: int = 16) -> tuple[Path, Path]:
    """Fallback without the shared COCO sample: 640x480 JPEGs with ~20 polygons each."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(num_images):
        im = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(20):
            cx, cy, r = rng.uniform(40, 600), rng.uniform(40, 440), rng.uniform(8, 120)
            angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
            poly = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).clip(0, [639, 479])
            draw.polygon([tuple(p) for p in poly], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": int(rng.integers(1, 6)),
                    "segmentation": [poly.ravel().tolist()],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float((x1 - x0) * (y1 - y0)),
                    "iscrowd": 0,
                }
            )
        im.save(root / "images" / f"{i:04d}.jpg", quality=90)
        images.append({"id": i + 1, "file_name": f"{i:04d}.jpg", "height": 480, "width": 640})
    ann_file = root / "instances.json"
    ann_file.write_text(
        json.dumps(
            {"images": images, "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in range(1, 6)]}
        )
    )
    return ann_file, root / "images"


def per_sample_ms(fn, n: int) -> float:
    fn(0)  # warm-up
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1000


def loader_section(ann_file: Path, image_dir: Path, size: int, samples: int, source: str) -> dict:
    torch.set_num_threads(1)  # as in a DataLoader worker
    plain = CocoInstances(ann_file, image_dir)
    lsj = CocoInstances(ann_file, image_dir, transforms=LargeScaleJitter(size))
    n = len(plain)
    torch.manual_seed(0)

    def decode(i: int) -> None:
        info = plain.coco.imgs[plain.image_ids[i % n]]
        read_image(image_dir / info["file_name"])

    ms = {
        "decode": per_sample_ms(decode, samples),
        "decode_masks": per_sample_ms(lambda i: plain[i % n], samples),
        "decode_masks_lsj": per_sample_ms(lambda i: lsj[i % n], samples),
    }
    instances = np.mean([len(plain.coco.imgToAnns.get(i, [])) for i in plain.image_ids])
    return {
        "source": source,
        "target_size": size,
        "images": n,
        "mean_instances_per_image": round(float(instances), 1),
        "samples_timed": samples,
        "ms_per_image": {k: round(v, 2) for k, v in ms.items()},
        "images_per_s_per_worker": round(1000 / ms["decode_masks_lsj"], 1),
        "lsj_vs_decode_only": round(ms["decode_masks_lsj"] / ms["decode"], 2),
    }


def model_section(
    ds: CocoInstances,
    backbone: str,
    size: int,
    batch: int,
    head_width: int,
    fc_dim: int,
    steps: int,
    device: str,
    threads: int,
    warmup: bool = True,
) -> dict:
    try:
        from studylib.models import build_adaptor, build_backbone, build_mask_rcnn
    except ImportError as e:
        return {"skipped": f"studylib.models.build_mask_rcnn not available ({e})"}
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vit = build_backbone(backbone, img_size=size)
    model = (
        build_mask_rcnn(
            build_adaptor(vit, "multiscale", out_channels=head_width),
            ds.num_classes + 1,
            img_size=size,
            head_width=head_width,
            fc_dim=fc_dim,
        )
        .to(device)
        .train()
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, targets = collate_fn([ds[i % len(ds)] for i in range(batch)])
    images = [im.to(device) for im in images]
    targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]

    def step() -> None:
        loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    if warmup:
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    step_s = (time.perf_counter() - start) / steps
    return {
        "backbone": backbone,
        "img_size": size,
        "batch": batch,
        "head_width": head_width,
        "fc_dim": fc_dim,
        "torch_threads": threads,
        "steps_timed": steps,
        "s_per_step": round(step_s, 3),
        "images_per_s": float(f"{batch / step_s:.3g}"),
    }


def verdict(loader: dict, model: dict, workers: int) -> dict:
    if "images_per_s" not in model:
        return {"skipped": "no model measurement"}
    loader_ips = loader["images_per_s_per_worker"]
    out = {"workers": workers, "loader_over_model": round(loader_ips / model["images_per_s"], 2)}
    if workers:
        out["loader_images_per_s"] = round(loader_ips * workers, 1)
        out["loader_is_bottleneck"] = loader_ips * workers < model["images_per_s"]
    else:  # loading runs in the training process, between steps
        load_s = model["batch"] / loader_ips
        out["loader_share_of_iteration"] = round(load_s / (load_s + model["s_per_step"]), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", help="default: benchmarks/results/data_<device>.json")
    parser.add_argument("--samples", type=int, default=48, help="images timed per loader measurement")
    parser.add_argument("--paper-model", default="vit_base", help="ViT preset for the 1024^2 step, or 'none'")
    parser.add_argument(
        "--model-steps", type=int, default=3, help="timed steps after one warm-up (on CPU at 1024^2: one cold step)"
    )
    args = parser.parse_args()
    threads = torch.get_num_threads()
    result = {
        "benchmark": "data pipeline images/s per worker vs model step",
        "device": device_name(args.device),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if (TINYCOCO / "annotations").is_dir():
            paper_data = (TINYCOCO / "annotations" / "instances_train2017.json", TINYCOCO / "images" / "train2017")
            source = "tinycoco train2017 (real COCO images and annotations)"
        else:
            paper_data, source = coco_like(Path(tmp) / "cocolike"), "generated 640x480 JPEGs with 20 polygons each"
        syn_cfg = SyntheticConfig(num_train=64, num_val=0, num_unlabeled=0)
        generate(Path(tmp) / "syn", syn_cfg)
        embedded_data = (
            Path(tmp) / "syn" / "annotations" / "instances_train.json",
            Path(tmp) / "syn" / "images" / "train",
        )

        scales = {
            "paper": (paper_data, 1024, source, args.paper_model, 1, 256, 1024, WORKERS_PER_GPU),
            "embedded": (embedded_data, 128, "synthetic easy preset (128^2)", "vit_micro", 8, 64, 256, 0),
        }
        for name, (data, size, src, backbone, batch, head, fc, workers) in scales.items():
            loader = loader_section(*data, size, args.samples, src)
            print(name, "loader", json.dumps(loader), flush=True)
            if backbone == "none":
                model = {"skipped": "--paper-model none"}
            else:
                slow = size > 256 and args.device == "cpu"  # minutes per step: one cold step is enough
                ds = CocoInstances(*data, transforms=LargeScaleJitter(size))
                model = model_section(
                    ds,
                    backbone,
                    size,
                    batch,
                    head,
                    fc,
                    1 if slow else args.model_steps,
                    args.device,
                    threads,
                    warmup=not slow,
                )
            print(name, "model", json.dumps(model), flush=True)
            result[name] = {"loader": loader, "model": model, "verdict": verdict(loader, model, workers)}
    paper = result["paper"]["loader"]["images_per_s_per_worker"]
    result["paper"]["gpu_reference"] = {
        **GPU_REFERENCE,
        "loader_images_per_s_with_8_workers": round(paper * WORKERS_PER_GPU, 1),
        "loader_is_bottleneck": paper * WORKERS_PER_GPU < GPU_REFERENCE["images_per_s_per_gpu"],
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"data_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
