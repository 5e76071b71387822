"""COCO box and mask AP: the 12 `COCOeval.stats` under flat `{iou_type}/{name}` keys.

One path serves the CLI (`python -m studylib.evaluate`) and the in-training evaluator:
`evaluate_results(gt, results, iou_type, backend)`. Two backends compute the same numbers:

- "pycocotools" (default): the official reference implementation; the published COCO numbers
  (and the golden test data) come from it, so it is the safe default.
- "faster": faster-coco-eval's C++ `COCOeval_faster`, several times faster on large sets; the
  tests check it gives the same 12 stats as pycocotools to 1e-12 on the golden data.

References: pycocotools `cocoeval.py`, faster-coco-eval, torchvision references/detection/coco_eval.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

IOU_TYPES = ("bbox", "segm")
BACKENDS = ("pycocotools", "faster")
# names of the 12 entries of COCOeval.stats, in order
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

IouType = Literal["bbox", "segm"]
Backend = Literal["pycocotools", "faster"]
# the key each results entry needs besides image_id, category_id, score
_RESULT_KEY = {"bbox": "bbox", "segm": "segmentation"}


def stat_keys(iou_type: str) -> list[str]:
    """The 12 metric keys for one IoU type, e.g. `bbox/AP` ... `bbox/ARl` (the metrics.json keys)."""
    _check_choice("iou_type", iou_type, IOU_TYPES)
    return [f"{iou_type}/{name}" for name in STAT_NAMES]


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; expected one of {list(allowed)}")


def _coco_class(backend: str) -> type:
    if backend == "faster":
        from faster_coco_eval import COCO
    else:
        from pycocotools.coco import COCO
    return COCO


def _coco_from_dataset(dataset: dict, backend: str) -> Any:
    """A backend COCO object indexing `dataset` (a COCO-format dict) without reading a file."""
    coco = _coco_class(backend)()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _read_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {str(path)!r} does not exist")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} file {str(path)!r} is not valid JSON: {e}") from e


def load_gt(gt: Any, backend: Backend = "pycocotools") -> Any:
    """Ground truth as the backend's COCO object; `gt` is a path, a COCO object of either library,
    or a COCO-format dict."""
    _check_choice("backend", backend, BACKENDS)
    if isinstance(gt, (str, os.PathLike)):
        dataset = _read_json(gt, "ground-truth")
        where = f"ground-truth file {str(gt)!r}"
    elif isinstance(gt, dict):
        dataset, where = gt, "ground-truth dict"
    elif hasattr(gt, "dataset") and hasattr(gt, "createIndex"):
        if isinstance(gt, _coco_class(backend)):
            return gt
        dataset, where = gt.dataset, f"ground-truth {type(gt).__name__}"
    else:
        raise ValueError(f"gt must be a path, a COCO object or a COCO-format dict, got {type(gt).__name__}")
    if not isinstance(dataset, dict):
        raise ValueError(f"{where} must hold a JSON object, got {type(dataset).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise ValueError(
                f"{where} has no {key!r} key (a COCO instances file needs images, annotations, categories)"
            )
    return _coco_from_dataset(dataset, backend)


def load_results(results: Any) -> list[dict]:
    """A COCO results list from a list or a JSON file path (entries shallow-copied: loadRes edits them)."""
    if isinstance(results, (str, os.PathLike)):
        where = f"results file {str(results)!r}"
        results = _read_json(results, "results")
    else:
        where = "results"
    if not isinstance(results, (list, tuple)):
        raise ValueError(f"{where} must be a list of detections, got {type(results).__name__}")
    return [dict(r) for r in results]


def _check_results(results: list[dict], coco_gt: Any, iou_type: str) -> None:
    """Raise on entries COCOeval would reject (assert) or silently drop (unknown image or category)."""
    needed = ("image_id", "category_id", "score", _RESULT_KEY[iou_type])
    img_ids, cat_ids = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    for i, r in enumerate(results):
        missing = [k for k in needed if k not in r]
        if missing:
            raise ValueError(f"results[{i}] lacks {missing} needed for iou_type={iou_type!r} (has {sorted(r)})")
        if r["image_id"] not in img_ids:
            raise ValueError(f"results[{i}] has image_id={r['image_id']!r}, which is not in the ground truth")
        if r["category_id"] not in cat_ids:
            raise ValueError(
                f"results[{i}] has category_id={r['category_id']!r}; ground-truth categories are {sorted(cat_ids)}"
            )


def _load_res(coco_gt: Any, results: list[dict], backend: str) -> Any:
    """Detections as a COCO object. pycocotools' loadRes fails on an empty list (it reads results[0]),
    so an empty result set becomes a COCO with the ground truth's images and categories and no
    annotations, which COCOeval scores as 0 AP (what faster-coco-eval's loadRes does too)."""
    if not results:
        dataset = {
            "images": list(coco_gt.dataset["images"]),
            "categories": list(coco_gt.dataset["categories"]),
            "annotations": [],
        }
        return _coco_from_dataset(dataset, backend)
    return coco_gt.loadRes(results)


def evaluate_results(
    gt: Any,
    results: Any,
    iou_type: IouType,
    backend: Backend = "pycocotools",
    verbose: bool = False,
) -> dict[str, float]:
    """COCO AP of `results` against `gt` -> the 12 `COCOeval.stats` under keys `stat_keys(iou_type)`.

    gt: annotation file path, pycocotools/faster-coco-eval COCO, or COCO-format dict.
    results: COCO results list (or JSON file path) with image_id, category_id, score and `bbox`
        (xywh) or `segmentation` (RLE). Empty results give AP = AR = 0.
    Values are exactly `COCOeval.stats`: in [0, 1], or -1 where the ground truth has no object
    in that area range (COCOeval's convention). `verbose` prints COCOeval's summary table.
    """
    E = _cocoeval(gt, results, iou_type, backend, verbose)
    stats = np.asarray(E.stats, dtype=np.float64)
    if stats.shape != (len(STAT_NAMES),):
        raise RuntimeError(f"{backend} COCOeval returned {stats.shape[0]} stats, expected {len(STAT_NAMES)}")
    return {k: float(v) for k, v in zip(stat_keys(iou_type), stats)}


def per_category_ap(gt: Any, results: Any, iou_type: IouType, backend: Backend = "pycocotools") -> dict[str, float]:
    """AP (IoU 0.5:0.95, all areas, 100 detections) of each ground-truth category, by category name:
    COCOeval's precision table averaged per category as `stats[0]` averages it over all (-1 where the
    ground truth has no instance of the category)."""
    E = _cocoeval(gt, results, iou_type, backend)
    precision = np.asarray(E.eval["precision"])[:, :, :, 0, -1]  # [IoU, recall, category] at area all, maxDets 100
    names = {c["id"]: c["name"] for c in E.cocoGt.dataset["categories"]}
    out = {}
    for k, cat in enumerate(E.params.catIds):
        p = precision[:, :, k]
        out[names[cat]] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
    return out


def _cocoeval(gt: Any, results: Any, iou_type: str, backend: str, verbose: bool = False) -> Any:
    """COCOeval of `results` against `gt`, evaluated, accumulated and summarized."""
    _check_choice("iou_type", iou_type, IOU_TYPES)
    _check_choice("backend", backend, BACKENDS)
    coco_gt = load_gt(gt, backend)
    results = load_results(results)
    _check_results(results, coco_gt, iou_type)
    out = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with out:
        coco_dt = _load_res(coco_gt, results, backend)
        if backend == "faster":
            from faster_coco_eval import COCOeval_faster

            E = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, print_function=print)
        else:
            from pycocotools.cocoeval import COCOeval

            E = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E
