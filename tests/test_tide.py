"""TIDE error analysis: one hand-made case per error type, agreement with tidecv's own front door,
no files or network touched, and the known 100-detections-per-image Miss (dbolya/tide#40)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studylib.evaluation import ERROR_NAMES, save_results, tide_errors

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN = SHARED / "data" / "cocoeval_golden"

# one 100x100 image, two class-1 objects far apart; class 2 exists but has no object
GT1, GT2 = [10.0, 10.0, 30.0, 30.0], [60.0, 60.0, 30.0, 30.0]
GT = dict(
    images=[dict(id=1, width=100, height=100, file_name="a.jpg"), dict(id=2, width=100, height=100, file_name="b.jpg")],
    categories=[dict(id=1, name="one"), dict(id=2, name="two")],
    annotations=[
        dict(id=1, image_id=1, category_id=1, bbox=GT1, area=900.0, iscrowd=0, segmentation=[]),
        dict(id=2, image_id=1, category_id=1, bbox=GT2, area=900.0, iscrowd=0, segmentation=[]),
    ],
)
LOOSE = [10.0, 10.0, 30.0, 90.0]  # IoU 30x30 / 30x90 = 1/3 with GT1: between 0.1 and 0.5


def det(box: list[float], score: float, cat: int = 1, image_id: int = 1) -> dict:
    return dict(image_id=image_id, category_id=cat, score=score, bbox=box)


def only(errors: dict[str, float], *names: str) -> None:
    """The named error types cost AP, every other one costs none."""
    for name in ERROR_NAMES:
        if name in names:
            assert errors[name] > 1.0, (name, errors)
        else:
            assert errors[name] == pytest.approx(0.0, abs=1e-9), (name, errors)


def test_perfect_detections_have_no_error():
    errors = tide_errors(GT, [det(GT1, 0.9), det(GT2, 0.8)])
    assert list(errors) == [*ERROR_NAMES, "AP50"]
    only(errors)
    assert errors["AP50"] == pytest.approx(100.0)


def test_wrong_class_is_a_cls_error():
    errors = tide_errors(GT, [det(GT1, 0.9, cat=2), det(GT2, 0.8)])
    only(errors, "cls")
    assert errors["AP50"] < 100.0


def test_badly_localized_box_is_a_loc_error():
    errors = tide_errors(GT, [det(LOOSE, 0.9), det(GT2, 0.8)])
    only(errors, "loc")


def test_wrong_class_and_badly_localized_is_both():
    errors = tide_errors(GT, [det(LOOSE, 0.9, cat=2), det(GT2, 0.8)])
    assert errors["both"] > 1.0
    assert errors["cls"] == errors["loc"] == errors["dupe"] == errors["bkg"] == 0.0
    assert errors["miss"] > 1.0  # GT1 is left unmatched and no oracle but Miss can match it


def test_second_detection_of_a_matched_object_is_a_dupe():
    errors = tide_errors(GT, [det(GT1, 0.9), det([11.0, 10.0, 30.0, 30.0], 0.8), det(GT2, 0.7)])
    only(errors, "dupe")


def test_detection_on_background_is_bkg():
    errors = tide_errors(GT, [det(GT1, 0.9), det([45.0, 5.0, 10.0, 10.0], 0.8), det(GT2, 0.7)])
    only(errors, "bkg")
    # a detection on an image without objects is background too
    only(tide_errors(GT, [det(GT1, 0.9), det(GT1, 0.8, image_id=2), det(GT2, 0.7)]), "bkg")


def test_unmatched_object_is_a_miss():
    errors = tide_errors(GT, [det(GT1, 0.9)])
    only(errors, "miss")
    assert errors["AP50"] == pytest.approx(50.0, abs=1.0)


def test_no_detections_gives_zero_ap_and_no_crash(tmp_path):
    path = save_results(tmp_path / "empty.json", [])
    for results in ([], path):
        errors = tide_errors(GT, results)
        assert errors == {**{k: 0.0 for k in ERROR_NAMES}, "AP50": 0.0}


def test_crowd_region_is_ignored_not_background():
    gt = json.loads(json.dumps(GT))
    gt["annotations"].append(
        dict(id=3, image_id=1, category_id=1, bbox=[40.0, 0.0, 20.0, 20.0], area=400.0, iscrowd=1, segmentation=[])
    )
    only(tide_errors(gt, [det(GT1, 0.9), det([45.0, 5.0, 10.0, 10.0], 0.8), det(GT2, 0.7)]))


def test_segm_mode_uses_masks():
    gt = json.loads(json.dumps(GT))
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    from pycocotools import mask as mask_utils

    def segm(box: list[float], score: float) -> dict:
        x, y, w, h = box
        rle = mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], 100, 100)[0]
        return dict(image_id=1, category_id=1, score=score, segmentation=dict(rle, counts=rle["counts"].decode()))

    only(tide_errors(gt, [segm(GT1, 0.9), segm(GT2, 0.8)], iou_type="segm"))
    only(tide_errors(gt, [segm(LOOSE, 0.9), segm(GT2, 0.8)], iou_type="segm"), "loc")


def test_rejects_bad_input():
    with pytest.raises(ValueError, match=r"iou_type='mask'.*\['bbox', 'segm'\]"):
        tide_errors(GT, [], iou_type="mask")
    with pytest.raises(ValueError, match="no non-crowd annotations"):
        tide_errors(dict(GT, annotations=[]), [det(GT1, 0.9)])
    with pytest.raises(ValueError, match=r"results\[0\] has image_id=5"):
        tide_errors(GT, [det(GT1, 0.9, image_id=5)])


def test_more_than_100_objects_in_an_image_are_missed():
    """tidecv keeps 100 detections per image over all classes (COCOeval: per class), so ground
    truth fed back as detections shows Miss errors on crowded images; a cause of dbolya/tide#40."""
    anns = [
        dict(
            id=i + 1,
            image_id=1,
            category_id=1 + i % 2,
            bbox=[(i % 12) * 8.0, (i // 12) * 8.0, 6.0, 6.0],
            area=36.0,
            iscrowd=0,
            segmentation=[],
        )
        for i in range(120)
    ]
    gt = dict(GT, annotations=anns)
    errors = tide_errors(gt, [det(a["bbox"], 1.0, cat=a["category_id"]) for a in anns])
    only(errors, "miss")
    assert errors["AP50"] < 90.0


def test_touches_no_files_and_no_network(monkeypatch, tmp_path):
    import urllib.request

    def offline(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("TIDE_PATH", str(tmp_path / "tide_data"))
    only(tide_errors(GT, [det(GT1, 0.9), det(GT2, 0.8)]))
    assert not (tmp_path / "tide_data").exists()


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_matches_tidecv_front_door_on_golden_data(iou_type, monkeypatch, tmp_path):
    """Our in-memory path equals tidecv's documented file-reading API (offline: a path is given)."""
    if not (GOLDEN / "instances_val2014_100.json").is_file():
        pytest.skip(f"golden COCO data not found at {GOLDEN} (the shared folder beside the repo)")
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlretrieve", lambda *a, **k: pytest.fail("tidecv tried to download"))
    monkeypatch.setenv("TIDE_PATH", str(tmp_path))  # TIDE() creates this folder (for its plot files)
    import matplotlib
    from tidecv import TIDE, datasets

    gt_path = GOLDEN / "instances_val2014_100.json"
    dt_path = GOLDEN / f"instances_val2014_fake{iou_type}100_results.json"
    with matplotlib.rc_context():  # TIDE() restyles matplotlib globally (seaborn whitegrid, dpi 150)
        tide = TIDE(mode=TIDE.BOX if iou_type == "bbox" else TIDE.MASK)
    run = tide.evaluate(datasets.COCO(path=str(gt_path)), datasets.COCOResult(str(dt_path), name="run"))
    theirs = tide.get_main_errors()["run"]
    ours = tide_errors(gt_path, dt_path, iou_type=iou_type)
    names = dict(cls="Cls", loc="Loc", both="Both", dupe="Dupe", bkg="Bkg", miss="Miss")
    assert ours == pytest.approx({**{k: theirs[v] for k, v in names.items()}, "AP50": run.ap}, abs=1e-9)
    assert ours["cls"] > 1.0 and ours["miss"] > 1.0  # the fake results do have errors
