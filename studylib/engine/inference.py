"""Evaluation during and after training: the model on the val set -> COCO results -> box and mask AP.

Every process predicts its share of the val images (index rank, rank + world, ...); rank 0
gathers the results and scores them with `studylib.evaluation`. Only images seen are scored:
the ground truth is cut to them (a `num_val_images` subset is a proper subset evaluation).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from timm.utils import unwrap_model
from torch.utils.data import Dataset, Subset

from ..data import collate_fn
from .distributed import DistInfo


def autocast(device: torch.device, amp: str):
    """bf16/fp16 autocast on GPUs; CPU always runs in full precision."""
    if device.type == "cpu" or amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def gt_subset(coco: Any, image_ids: list[int]) -> dict:
    """The COCO-format ground truth of `image_ids` only (crowd regions kept: they are ignore regions)."""
    keep = set(image_ids)
    data = coco.dataset
    return {
        "images": [im for im in data["images"] if im["id"] in keep],
        "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
        "categories": list(data["categories"]),
    }


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    amp: str = "none",
    batch_size: int = 2,
    dist_info: DistInfo | None = None,
) -> tuple[list[dict], list[dict], list[int], float]:
    """This process's share of `dataset` -> (bbox_results, segm_results, image_ids, seconds in the model)."""
    from ..evaluation import predictions_to_results

    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    rank, world = (dist_info.rank, dist_info.world_size) if dist_info else (0, 1)
    indices = list(range(rank, len(dataset), world))
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    bbox, segm, ids, seconds = [], [], [], 0.0
    try:
        for start in range(0, len(indices), batch_size):
            images, targets = collate_fn([dataset[i] for i in indices[start : start + batch_size]])
            images = [im.to(device, non_blocking=True) for im in images]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with autocast(device, amp):
                outputs = net(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - t0
            outputs = [{k: v.float().cpu() for k, v in o.items()} for o in outputs]
            image_ids = [int(t["image_id"]) for t in targets]
            b, s = predictions_to_results(outputs, image_ids, base.label_to_category_id)
            bbox += b
            segm += s
            ids += image_ids
    finally:
        net.train(was_training)
    return bbox, segm, ids, seconds


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    amp: str = "none",
    backend: str = "pycocotools",
    batch_size: int = 2,
    dist_info: DistInfo | None = None,
) -> dict[str, Any] | None:
    """Box and mask AP of `model` on `dataset`; on rank 0 a dict with `metrics` (flat `bbox/AP`, ...,
    `infer/time_per_image_s`), `bbox_results`, `segm_results` and `gt`; None on other ranks."""
    from ..evaluation import evaluate_results

    part = predict(model, dataset, device, amp, batch_size, dist_info)
    parts = [part]
    if dist_info is not None and dist_info.distributed:
        parts = [None] * dist_info.world_size
        dist.all_gather_object(parts, part)
    if dist_info is not None and not dist_info.is_main:
        return None
    bbox = [r for p in parts for r in p[0]]
    segm = [r for p in parts for r in p[1]]
    ids = sorted(i for p in parts for i in p[2])
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    gt = gt_subset(base.coco, ids)
    metrics = {**evaluate_results(gt, bbox, "bbox", backend), **evaluate_results(gt, segm, "segm", backend)}
    # per-process seconds over per-process images: the time one device spends per image
    metrics["infer/time_per_image_s"] = sum(p[3] for p in parts) / max(1, len(ids))
    return {"metrics": metrics, "bbox_results": bbox, "segm_results": segm, "gt": gt}
