"""TIDE error analysis (Bolya et al. 2020) as in the paper's Figure 4: ΔAP box at IoU 0.5.

Each false positive or missed ground truth gets one type, and an oracle that fixes all errors of
one type gives its ΔAP (AP@0.5 points, 0-100, tidecv's unit):
  cls   IoU >= 0.5 with a ground truth of another class;
  loc   right class, 0.1 <= IoU <= 0.5;
  both  cls+loc (tidecv's "Both", OtherError): none of the others, yet IoU > 0.1 with some
        ground truth; in practice a wrong class with 0.1 < IoU < 0.5;
  dupe  right class, IoU >= 0.5, but the ground truth is already matched by a higher score;
  bkg   IoU <= 0.1 with every ground truth;
  miss  ground truth that no detection matched or could be fixed into a match.

Wraps tidecv 1.0.1 (checked offline with numpy 2.4 and pandas 3.1). tidecv's `datasets.COCO()`
downloads COCO when called without a path, and its `TIDE` object creates a folder under the user's
data dir (for plot temp files) and restyles matplotlib globally, so we use neither: ground truth and results
are converted in memory and scored with `tidecv.quantify.TIDERun`, which touches no files.

Known tidecv behaviour (dbolya/tide#40): ground truth fed back as detections can still show a
Miss error. tidecv keeps at most 100 detections per image (all classes together) where COCOeval
keeps 100 per image and class, so ground truths of images with more than 100 objects go missing.
"""

from __future__ import annotations

from typing import Any, Literal

from .coco import IOU_TYPES, _check_choice, _check_results, load_gt, load_results

ERROR_NAMES = ("cls", "loc", "both", "dupe", "bkg", "miss")
POS_THRESHOLD = 0.5  # the paper reports TIDE at IoU 0.5
BACKGROUND_THRESHOLD = 0.1  # IoU below which a detection is on background (TIDE default)
MAX_DETS = 100  # detections per image (tidecv's COCO setting)


def _error_types() -> dict[str, type]:
    from tidecv.errors.main_errors import (
        BackgroundError,
        BoxError,
        ClassError,
        DuplicateError,
        MissedError,
        OtherError,
    )

    return dict(
        cls=ClassError, loc=BoxError, both=OtherError, dupe=DuplicateError, bkg=BackgroundError, miss=MissedError
    )


def _tide_gt(coco_gt: Any, iou_type: str) -> Any:
    """pycocotools COCO -> tidecv Data (what `tidecv.datasets.COCO(path)` builds, but from memory)."""
    from tidecv import Data

    data = Data("gt", max_dets=MAX_DETS)
    for img in coco_gt.dataset["images"]:
        data.add_image(img["id"], img.get("file_name", str(img["id"])))
    for cat in coco_gt.dataset["categories"]:
        data.add_class(cat["id"], cat.get("name", str(cat["id"])))
    for ann in coco_gt.dataset["annotations"]:
        mask = coco_gt.annToRLE(ann) if iou_type == "segm" else None
        if ann.get("iscrowd", 0):
            data.add_ignore_region(ann["image_id"], ann["category_id"], ann["bbox"], mask)
        else:
            data.add_ground_truth(ann["image_id"], ann["category_id"], ann["bbox"], mask)
    return data


def _tide_preds(results: list[dict], iou_type: str) -> Any:
    from tidecv import Data

    data = Data("results")
    for r in results:
        box = r.get("bbox") if iou_type == "bbox" else None
        mask = r.get("segmentation") if iou_type == "segm" else None
        data.add_detection(r["image_id"], r["category_id"], r["score"], box, mask)
    return data


def _map(ap_data: Any) -> float:
    """Mean AP over classes with data; 0 when none is left (tidecv's get_mAP divides by zero)."""
    aps = [obj.get_ap() for obj in ap_data.objs.values() if not obj.is_empty()]
    return sum(aps) / len(aps) if aps else 0.0


def tide_errors(gt: Any, bbox_results: Any, iou_type: Literal["bbox", "segm"] = "bbox") -> dict[str, float]:
    """TIDE main errors of COCO results -> {"cls","loc","both","dupe","bkg","miss","AP50"}.

    gt: annotation file path, COCO object or COCO-format dict; bbox_results: COCO results list or
    JSON path (segm results with iou_type="segm" give the mask version). Each error value is the
    ΔAP@0.5 in AP points (0-100, as tidecv reports; COCO stats elsewhere are 0-1) gained by fixing
    only that error type; "AP50" is tidecv's base AP@0.5 in the same unit. Crowd annotations are
    ignore regions. With no detections every ΔAP is 0 (no oracle can raise AP above 0).
    """
    _check_choice("iou_type", iou_type, IOU_TYPES)
    from tidecv.quantify import TIDERun

    coco_gt = load_gt(gt, "pycocotools")
    if not any(not a.get("iscrowd", 0) for a in coco_gt.dataset["annotations"]):
        raise ValueError("ground truth has no non-crowd annotations; TIDE needs objects to score against")
    results = load_results(bbox_results)
    _check_results(results, coco_gt, iou_type)
    mode = "bbox" if iou_type == "bbox" else "mask"
    run = TIDERun(
        _tide_gt(coco_gt, iou_type),
        _tide_preds(results, iou_type),
        POS_THRESHOLD,
        BACKGROUND_THRESHOLD,
        mode,
        MAX_DETS,
        True,
    )
    base = float(run.ap)
    out: dict[str, float] = {}
    for name, error_type in _error_types().items():
        fixed = run.fix_errors(lambda err, t=error_type: isinstance(err, t))
        out[name] = max(_map(fixed) - base, 0.0)  # as tidecv: negative deltas are binning noise
    out["AP50"] = base
    return out
