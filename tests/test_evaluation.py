"""COCO evaluation: golden COCOeval numbers, backends, predictions -> results, atomic save, CLI."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from studylib.evaluate import main as evaluate_main
from studylib.evaluation import (
    STAT_NAMES,
    evaluate_results,
    masks_to_rle,
    per_category_ap,
    predictions_to_results,
    save_results,
    stat_keys,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN = SHARED / "data" / "cocoeval_golden"
TINYCOCO = SHARED / "data" / "tinycoco" / "annotations"
# pycocotools 2.0.11 decode under numpy 2 warns about __array__(copy=...); harmless here
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
GOLDEN_FILES = {
    "bbox": "instances_val2014_fakebbox100_results.json",
    "segm": "instances_val2014_fakesegm100_results.json",
}
AP_KEYS = ("AP", "AP50", "AP75")
AREA_KEYS = ("APs", "APm", "APl", "ARs", "ARm", "ARl")


def _golden() -> Path:
    if not (GOLDEN / "expected_stats.json").is_file():
        pytest.skip(f"golden COCOeval data not found at {GOLDEN} (the shared folder beside the repo)")
    return GOLDEN


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _poly(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _ann(i: int, image_id: int, cat: int, box: list[float], iscrowd: int = 0) -> dict:
    x, y, w, h = box
    return dict(
        id=i, image_id=image_id, category_id=cat, bbox=box, area=w * h, iscrowd=iscrowd, segmentation=_poly(*box)
    )


@pytest.fixture
def synthetic_gt() -> COCO:
    """3 images, non-contiguous category ids, small and large objects (no medium), a crowd region
    and an image without objects."""
    images = [dict(id=10, width=64, height=48), dict(id=20, width=200, height=150), dict(id=30, width=32, height=32)]
    cats = [dict(id=3, name="a"), dict(id=7, name="b"), dict(id=11, name="c")]
    anns = [
        _ann(1, 10, 3, [4, 4, 10, 12]),
        _ann(2, 10, 3, [30, 20, 8, 8]),
        _ann(3, 10, 7, [40, 2, 20, 6]),
        _ann(4, 20, 11, [10, 10, 120, 100]),  # large: 12000 > 96**2
        _ann(5, 20, 7, [150, 120, 20, 20]),
        _ann(6, 20, 3, [140, 5, 50, 25], iscrowd=1),
    ]
    crowd = anns[-1]
    crowd["segmentation"] = _coco(dict(images=images, categories=cats, annotations=[])).annToRLE(dict(crowd, iscrowd=0))
    crowd["segmentation"]["counts"] = crowd["segmentation"]["counts"].decode()
    return _coco(dict(images=images, categories=cats, annotations=anns))


def gt_as_outputs(coco: COCO) -> tuple[list[dict], list[int], dict[int, int]]:
    """Ground truth (crowd excluded) as torchvision Mask R-CNN outputs, one per image."""
    cat_ids = sorted(coco.getCatIds())
    label_to_cat = {i + 1: c for i, c in enumerate(cat_ids)}
    cat_to_label = {c: label for label, c in label_to_cat.items()}
    outputs, image_ids = [], []
    for img in coco.dataset["images"]:
        anns = [a for a in coco.imgToAnns[img["id"]] if not a["iscrowd"]]
        h, w = img["height"], img["width"]
        boxes = torch.tensor(
            [[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)], dtype=torch.float64
        )
        masks = torch.from_numpy(np.stack([coco.annToMask(a) for a in anns])) if anns else torch.zeros(0, h, w)
        outputs.append(
            dict(
                boxes=boxes.reshape(-1, 4),
                labels=torch.tensor([cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
                scores=torch.ones(len(anns)),
                masks=masks.float().reshape(-1, 1, h, w),
            )
        )
        image_ids.append(img["id"])
    return outputs, image_ids, label_to_cat


def _assert_perfect(stats: dict[str, float], iou_type: str) -> None:
    for name in AP_KEYS + ("AR100",):
        assert stats[f"{iou_type}/{name}"] == pytest.approx(1.0, abs=1e-12), name
    for name in AREA_KEYS:  # 1 where the area range has objects, COCOeval's -1 where it has none
        assert stats[f"{iou_type}/{name}"] in (pytest.approx(1.0, abs=1e-12), -1.0), name


# ---------------------------------------------------------------- golden numbers and backends


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_reproduces_official_cocoeval_stats(iou_type):
    golden = _golden()
    expected = json.loads((golden / "expected_stats.json").read_text())[iou_type]
    stats = evaluate_results(golden / "instances_val2014_100.json", golden / GOLDEN_FILES[iou_type], iou_type)
    assert list(stats) == stat_keys(iou_type)
    np.testing.assert_allclose(list(stats.values()), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_backend_matches_pycocotools(iou_type):
    golden = _golden()
    gt = golden / "instances_val2014_100.json"
    ref = evaluate_results(gt, golden / GOLDEN_FILES[iou_type], iou_type, backend="pycocotools")
    fast = evaluate_results(gt, golden / GOLDEN_FILES[iou_type], iou_type, backend="faster")
    assert list(fast) == list(ref)
    np.testing.assert_allclose(list(fast.values()), list(ref.values()), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["pycocotools", "faster"])
def test_per_category_ap_averages_to_the_official_ap(backend):
    golden = _golden()
    gt = json.loads((golden / "instances_val2014_100.json").read_text())
    per = per_category_ap(gt, golden / GOLDEN_FILES["bbox"], "bbox", backend)
    assert set(per) == {c["name"] for c in gt["categories"]}
    present = {c["name"] for c in gt["categories"] if any(a["category_id"] == c["id"] for a in gt["annotations"])}
    assert {k for k, v in per.items() if v == -1.0} == set(per) - present  # -1: no instance, as COCOeval
    expected = json.loads((golden / "expected_stats.json").read_text())["bbox"][0]
    assert np.mean([v for v in per.values() if v >= 0]) == pytest.approx(expected, abs=1e-9)


def test_stat_keys_are_the_metrics_json_names():
    assert stat_keys("bbox") == [
        "bbox/AP",
        "bbox/AP50",
        "bbox/AP75",
        "bbox/APs",
        "bbox/APm",
        "bbox/APl",
        "bbox/AR1",
        "bbox/AR10",
        "bbox/AR100",
        "bbox/ARs",
        "bbox/ARm",
        "bbox/ARl",
    ]
    assert stat_keys("segm") == [f"segm/{n}" for n in STAT_NAMES]
    with pytest.raises(ValueError, match=r"iou_type='keypoints'.*\['bbox', 'segm'\]"):
        stat_keys("keypoints")


# ---------------------------------------------------------------- perfect, degraded and empty predictions


@pytest.mark.parametrize("backend", ["pycocotools", "faster"])
def test_ground_truth_fed_back_scores_ap_one(synthetic_gt, backend):
    outputs, image_ids, label_to_cat = gt_as_outputs(synthetic_gt)
    bbox_results, segm_results = predictions_to_results(outputs, image_ids, label_to_cat)
    assert len(bbox_results) == len(segm_results) == 5  # the crowd region is not a detection
    for iou_type, results in (("bbox", bbox_results), ("segm", segm_results)):
        stats = evaluate_results(synthetic_gt, results, iou_type, backend=backend)
        _assert_perfect(stats, iou_type)
        assert stats[f"{iou_type}/APm"] == -1.0  # no medium object in this ground truth
        assert stats[f"{iou_type}/APl"] == pytest.approx(1.0)


@pytest.mark.parametrize("split", ["val2017", "train2017"])
def test_ground_truth_fed_back_on_tinycoco(split):
    path = TINYCOCO / f"instances_{split}.json"
    if not path.is_file():
        pytest.skip(f"tinycoco annotations not found at {path} (the shared folder beside the repo)")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    outputs, image_ids, label_to_cat = gt_as_outputs(coco)
    bbox_results, segm_results = predictions_to_results(outputs, image_ids, label_to_cat)
    _assert_perfect(evaluate_results(coco, bbox_results, "bbox"), "bbox")
    _assert_perfect(evaluate_results(path, segm_results, "segm"), "segm")


def test_loose_boxes_pass_iou_half_but_not_three_quarters(synthetic_gt):
    outputs, image_ids, label_to_cat = gt_as_outputs(synthetic_gt)
    for out in outputs:  # widen each box by half its width: IoU = 1/1.5
        out["boxes"][:, 2] += 0.5 * (out["boxes"][:, 2] - out["boxes"][:, 0])
    bbox_results, _ = predictions_to_results(outputs, image_ids, label_to_cat)
    stats = evaluate_results(synthetic_gt, bbox_results, "bbox")
    assert stats["bbox/AP50"] == pytest.approx(1.0)
    assert stats["bbox/AP75"] == 0.0


@pytest.mark.parametrize("backend", ["pycocotools", "faster"])
def test_empty_results_give_zeros(synthetic_gt, tmp_path, backend):
    (tmp_path / "empty.json").write_text("[]")
    for results in ([], tmp_path / "empty.json"):
        for iou_type in ("bbox", "segm"):
            stats = evaluate_results(synthetic_gt, results, iou_type, backend=backend)
            assert list(stats) == stat_keys(iou_type)
            assert all(v == 0.0 or (k.endswith("m") and v == -1.0) for k, v in stats.items()), stats


def test_gt_path_object_and_dict_agree_and_results_are_not_mutated(synthetic_gt, tmp_path):
    outputs, image_ids, label_to_cat = gt_as_outputs(synthetic_gt)
    _, segm_results = predictions_to_results(outputs, image_ids, label_to_cat)
    segm_results[0]["score"] = 0.5
    before = copy.deepcopy(segm_results)
    save_results(tmp_path / "gt.json", synthetic_gt.dataset)
    by_path = evaluate_results(tmp_path / "gt.json", segm_results, "segm")
    assert evaluate_results(synthetic_gt, segm_results, "segm") == by_path
    assert evaluate_results(synthetic_gt.dataset, segm_results, "segm", backend="faster") == pytest.approx(by_path)
    assert segm_results == before


# ---------------------------------------------------------------- predictions -> results


def test_predictions_to_results_format():
    masks = torch.zeros(2, 1, 6, 8)
    masks[0, 0, 1:3, 2:5] = 0.9
    masks[0, 0, 4, 0] = 0.5  # exactly at the threshold: background
    masks[1, 0, :, :] = 0.6
    out = dict(
        boxes=torch.tensor([[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 8.0, 6.0]]),
        labels=torch.tensor([2, 1]),
        scores=torch.tensor([0.75, 0.25]),
        masks=masks,
    )
    bbox_results, segm_results = predictions_to_results([out], [torch.tensor(42)], {1: 17, 2: 90})
    assert bbox_results == [
        dict(image_id=42, category_id=90, score=0.75, bbox=[2.0, 1.0, 3.0, 2.0]),
        dict(image_id=42, category_id=17, score=0.25, bbox=[0.0, 0.0, 8.0, 6.0]),
    ]
    assert [r["category_id"] for r in segm_results] == [90, 17]
    rle = segm_results[0]["segmentation"]
    assert isinstance(rle["counts"], str) and rle["size"] == [6, 8]
    import pycocotools.mask as mask_utils

    decoded = mask_utils.decode(dict(rle, counts=rle["counts"].encode()))
    np.testing.assert_array_equal(decoded, (masks[0, 0] > 0.5).numpy().astype(np.uint8))
    assert mask_utils.area(segm_results[1]["segmentation"]) == 48
    json.dumps(bbox_results + segm_results)  # JSON-serializable as is
    _, high = predictions_to_results([out], [42], {1: 17, 2: 90}, mask_threshold=0.7)
    assert mask_utils.area(high[1]["segmentation"]) == 0


def test_masks_to_rle_accepts_three_dims_and_rejects_others():
    assert len(masks_to_rle(torch.ones(3, 4, 5))) == 3
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\).*\(2, 3, 4, 5\)"):
        masks_to_rle(torch.ones(2, 3, 4, 5))


def test_empty_image_output_gives_no_results():
    out = dict(
        boxes=torch.zeros(0, 4),
        labels=torch.zeros(0, dtype=torch.int64),
        scores=torch.zeros(0),
        masks=torch.zeros(0, 1, 5, 5),
    )
    assert predictions_to_results([out], [1], {1: 1}) == ([], [])


def test_predictions_to_results_rejects_bad_input():
    good = dict(boxes=torch.zeros(1, 4), labels=torch.tensor([3]), scores=torch.ones(1), masks=torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"labels \[3\].*known labels \[1, 2\]"):
        predictions_to_results([good], [1], {1: 5, 2: 6})
    with pytest.raises(ValueError, match="2 outputs but 1 image_ids"):
        predictions_to_results([good, good], [1], {3: 1})
    with pytest.raises(ValueError, match=r"lacks \['masks'\]"):
        predictions_to_results([{k: v for k, v in good.items() if k != "masks"}], [1], {3: 1})
    with pytest.raises(ValueError, match="inconsistent shapes"):
        predictions_to_results([dict(good, scores=torch.ones(2))], [1], {3: 1})


# ---------------------------------------------------------------- input validation


def test_evaluate_results_rejects_bad_input(synthetic_gt, tmp_path):
    det = dict(image_id=10, category_id=3, score=1.0, bbox=[0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"iou_type='mask'.*\['bbox', 'segm'\]"):
        evaluate_results(synthetic_gt, [det], "mask")
    with pytest.raises(ValueError, match=r"backend='detectron2'.*\['pycocotools', 'faster'\]"):
        evaluate_results(synthetic_gt, [det], "bbox", backend="detectron2")
    with pytest.raises(ValueError, match=r"results\[0\] lacks \['segmentation'\]"):
        evaluate_results(synthetic_gt, [det], "segm")
    with pytest.raises(ValueError, match=r"results\[1\] has image_id=99"):
        evaluate_results(synthetic_gt, [det, dict(det, image_id=99)], "bbox")
    with pytest.raises(ValueError, match=r"category_id=4; ground-truth categories are \[3, 7, 11\]"):
        evaluate_results(synthetic_gt, [dict(det, category_id=4)], "bbox")
    missing = tmp_path / "missing.json"
    with pytest.raises(ValueError, match=f"ground-truth file '{missing}' does not exist"):
        evaluate_results(missing, [det], "bbox")
    (tmp_path / "obj.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="must be a list of detections, got dict"):
        evaluate_results(synthetic_gt, tmp_path / "obj.json", "bbox")
    with pytest.raises(ValueError, match="has no 'images' key"):
        evaluate_results(tmp_path / "obj.json", [det], "bbox")


# ---------------------------------------------------------------- atomic save


def test_save_results_is_atomic(tmp_path):
    path = tmp_path / "sub" / "bbox_results.json"
    results = [dict(image_id=1, category_id=2, score=0.5, bbox=[1.0, 2.0, 3.0, 4.0])]
    assert save_results(path, results) == path
    assert json.loads(path.read_text()) == results
    save_results(path, results * 2)
    assert json.loads(path.read_text()) == results * 2
    with pytest.raises(TypeError):
        save_results(path, [dict(bad=object())])
    assert json.loads(path.read_text()) == results * 2  # a failed write leaves the old file whole
    assert sorted(os.listdir(path.parent)) == ["bbox_results.json"]  # and no temporary file behind


# ---------------------------------------------------------------- CLI


def test_cli_prints_one_json_object(synthetic_gt, tmp_path, capsys):
    outputs, image_ids, label_to_cat = gt_as_outputs(synthetic_gt)
    _, segm_results = predictions_to_results(outputs, image_ids, label_to_cat)
    gt, dt = save_results(tmp_path / "gt.json", synthetic_gt.dataset), save_results(tmp_path / "dt.json", segm_results)
    assert evaluate_main(["--gt", str(gt), "--dt", str(dt), "--type", "segm", "--verbose"]) == 0
    captured = capsys.readouterr()
    stats = json.loads(captured.out)
    assert list(stats) == stat_keys("segm") and stats["segm/AP"] == pytest.approx(1.0)
    assert "Average Precision" in captured.err  # the COCOeval table went to stderr
    with pytest.raises(SystemExit) as exc:
        evaluate_main(["--gt", str(gt), "--dt", str(tmp_path / "nope.json")])
    assert exc.value.code == 2 and "nope.json' does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_module_runs_as_a_program(synthetic_gt, tmp_path):
    outputs, image_ids, label_to_cat = gt_as_outputs(synthetic_gt)
    bbox_results, _ = predictions_to_results(outputs, image_ids, label_to_cat)
    gt, dt = save_results(tmp_path / "gt.json", synthetic_gt.dataset), save_results(tmp_path / "dt.json", bbox_results)
    proc = subprocess.run(
        [sys.executable, "-m", "studylib.evaluate", "--gt", str(gt), "--dt", str(dt), "--tide"],
        capture_output=True,
        text=True,
        check=True,
    )
    stats = json.loads(proc.stdout)
    assert stats["bbox/AP"] == pytest.approx(1.0) and stats["tide/AP50"] == pytest.approx(100.0)
    assert {f"tide/{k}" for k in ("cls", "loc", "both", "dupe", "bkg", "miss")} <= set(stats)
