"""Mask R-CNN predictions -> COCO results lists, and an atomic JSON writer for them.

torchvision's Mask R-CNN returns, per image, `boxes` (N, 4) xyxy in original-image pixels,
`labels` (N,) in 1..K, `scores` (N,) and `masks` (N, 1, H, W) soft masks at image resolution.
COCO results want xywh boxes, the dataset's own category ids and binary masks as RLE.

References: torchvision references/detection/coco_eval.py (prepare_for_coco_detection/segmentation).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pycocotools.mask as mask_utils
import torch
from torchvision.ops import box_convert

from ..io import atomic_write_text

_OUTPUT_KEYS = ("boxes", "labels", "scores", "masks")


def _image_id(image_id: Any) -> int:
    return int(image_id.item() if isinstance(image_id, torch.Tensor) else image_id)


def masks_to_rle(masks: torch.Tensor, mask_threshold: float = 0.5) -> list[dict]:
    """(N, 1, H, W) or (N, H, W) soft masks -> N COCO RLEs of `mask > mask_threshold`, counts as str."""
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, 1, H, W) or (N, H, W), got {tuple(masks.shape)}")
    binary = (masks > mask_threshold).to(torch.uint8).cpu().numpy()  # (N, H, W)
    # pycocotools encodes a Fortran-ordered (H, W, N) stack in one call
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")  # bytes are not JSON
    return rles


def predictions_to_results(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[Any],
    label_to_category_id: Mapping[int, int],
    mask_threshold: float = 0.5,
) -> tuple[list[dict], list[dict]]:
    """Mask R-CNN outputs of a batch of images -> (bbox_results, segm_results) COCO results lists.

    outputs[i] belongs to image image_ids[i]; labels map to COCO category ids through
    `label_to_category_id` (e.g. `CocoInstances.label_to_category_id`). Both lists hold one entry
    per detection, in the same order; masks are thresholded at `mask_threshold` and RLE-encoded.
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"got {len(outputs)} outputs but {len(image_ids)} image_ids; they must pair up")
    bbox_results: list[dict] = []
    segm_results: list[dict] = []
    for i, (out, image_id) in enumerate(zip(outputs, image_ids)):
        missing = [k for k in _OUTPUT_KEYS if k not in out]
        if missing:
            raise ValueError(f"outputs[{i}] lacks {missing}; Mask R-CNN outputs have keys {list(_OUTPUT_KEYS)}")
        image_id = _image_id(image_id)
        boxes, labels, scores, masks = (out[k].detach() for k in _OUTPUT_KEYS)
        n = len(boxes)
        if not (boxes.shape == (n, 4) and labels.shape == (n,) and scores.shape == (n,) and len(masks) == n):
            raise ValueError(
                f"outputs[{i}] has inconsistent shapes: boxes {tuple(boxes.shape)}, labels {tuple(labels.shape)}, "
                f"scores {tuple(scores.shape)}, masks {tuple(masks.shape)}"
            )
        if n == 0:
            continue
        unknown = sorted({int(label) for label in labels.tolist()} - set(label_to_category_id))
        if unknown:
            raise ValueError(
                f"outputs[{i}] has labels {unknown} missing from label_to_category_id "
                f"(known labels {sorted(label_to_category_id)})"
            )
        xywh = box_convert(boxes.cpu().to(torch.float64), "xyxy", "xywh").tolist()
        rles = masks_to_rle(masks, mask_threshold)
        for box, label, score, rle in zip(xywh, labels.tolist(), scores.tolist(), rles):
            common = {"image_id": image_id, "category_id": int(label_to_category_id[int(label)]), "score": float(score)}
            bbox_results.append({**common, "bbox": box})
            segm_results.append({**common, "segmentation": rle})
    return bbox_results, segm_results


def save_results(path: str | os.PathLike, results: list[dict]) -> Path:
    """Write a COCO results list as JSON atomically (studylib.io)."""
    return atomic_write_text(path, json.dumps(results))
