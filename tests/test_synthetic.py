"""The synthetic dataset: byte-determinism, COCO validity, visible masks, size range, safe writing, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from studylib.data import CocoInstances
from studylib.data.synthetic import PRESETS, SyntheticConfig, draw_image, generate, main, preset_config

TINY = SyntheticConfig(image_size=48, num_train=6, num_val=3, num_unlabeled=2)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("syn") / "data"
    generate(root, SyntheticConfig(image_size=64, num_train=40, num_val=8, num_unlabeled=3))
    return root


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    generate(tmp_path / "a", TINY)
    generate(tmp_path / "b", TINY)
    generate(tmp_path / "c", preset_config(**{**vars(TINY), "seed": 1}))
    a, b, c = (_hashes(tmp_path / n) for n in "abc")
    assert len(a) == 6 + 3 + 2 + 3  # images, two annotation files, meta.json
    assert a == b
    differ = [k for k in a if k != "meta.json" and a[k] != c[k]]
    assert len(differ) >= 6 + 3 + 2


def test_layout_and_meta(dataset: Path) -> None:
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["config"]["num_train"] == 40 and meta["config"]["object_size"] == [0.10, 0.45]
    for split in ("train", "val"):
        data = json.loads((dataset / "annotations" / f"instances_{split}.json").read_text())
        assert (
            len(data["images"]) == meta["counts"][split]["images"] == len(list((dataset / "images" / split).iterdir()))
        )
        assert len(data["annotations"]) == meta["counts"][split]["annotations"]
    assert len(list((dataset / "unlabeled").glob("*.png"))) == meta["counts"]["unlabeled"]["images"] == 3


def test_loads_through_coco_instances(dataset: Path) -> None:
    ds = CocoInstances(dataset / "annotations" / "instances_train.json", dataset / "images" / "train")
    assert ds.label_to_category_id == {1: 1, 2: 3, 3: 5, 4: 7}  # odd ids -> contiguous labels
    coco = ds.coco
    n_instances = 0
    for index in range(len(ds)):
        image, target = ds[index]
        assert image.shape == (3, 64, 64)
        masks = target["masks"]
        assert masks.sum(0).max() <= 1  # visible masks never overlap
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[target["image_id"]]))
        for m, box, ann in zip(masks, target["boxes"], anns):
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # bbox from the mask
            assert ann["area"] == int(m.sum()) > 0
        n_instances += len(anns)
    assert n_instances >= len(ds)  # at least one object per image on average (1-4 by default)


def test_objects_span_a_range_of_sizes(dataset: Path) -> None:
    data = json.loads((dataset / "annotations" / "instances_train.json").read_text())
    extents = np.array([max(a["bbox"][2], a["bbox"][3]) for a in data["annotations"]]) / 64
    assert extents.min() < 0.16 and extents.max() > 0.35
    assert len({a["category_id"] for a in data["annotations"]}) == 4


def test_occluded_objects_keep_visible_part_or_are_dropped() -> None:
    cfg = SyntheticConfig(image_size=48, objects_per_image=(12, 12), object_size=(0.3, 0.6), max_occlusion=1.0)
    dropped_total, seen_partial = 0, False
    for seed in range(8):
        _, objects, dropped = draw_image(np.random.default_rng(seed), cfg)
        masks = np.stack([m for _, m in objects])
        assert masks.any(axis=(1, 2)).all()
        assert masks.sum(0).max() <= 1
        assert len(objects) + dropped <= 12
        dropped_total += dropped
        seen_partial |= len(objects) > 1
    assert dropped_total > 0 and seen_partial


def test_rle_segmentation_matches_mask_bbox_and_area(dataset: Path) -> None:
    data = json.loads((dataset / "annotations" / "instances_val.json").read_text())
    for ann in data["annotations"]:
        rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        assert int(mask_utils.area(rle)) == ann["area"]
        assert mask_utils.toBbox(rle).tolist() == ann["bbox"]
        assert ann["iscrowd"] == 0


def test_existing_dataset_kept_different_one_refused(tmp_path: Path) -> None:
    out = tmp_path / "d"
    meta = generate(out, TINY)
    stamp = (out / "meta.json").stat().st_mtime_ns
    assert generate(out, TINY) == meta and (out / "meta.json").stat().st_mtime_ns == stamp
    other = preset_config(**{**vars(TINY), "num_val": 4})
    with pytest.raises(FileExistsError, match="different or incomplete synthetic dataset"):
        generate(out, other)
    assert generate(out, other, overwrite=True)["counts"]["val"]["images"] == 4
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="no meta.json"):
        generate(foreign, TINY, overwrite=True)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind


def test_cli_and_presets(tmp_path: Path, capsys) -> None:
    meta = main(
        [
            "--out",
            str(tmp_path / "h"),
            "--preset",
            "hard",
            "--num-train",
            "3",
            "--num-val",
            "2",
            "--num-unlabeled",
            "1",
            "--image-size",
            "40",
            "--object-size",
            "0.1",
            "0.5",
        ]
    )
    assert meta["config"]["num_classes"] == PRESETS["hard"]["num_classes"]
    assert meta["config"]["object_size"] == [0.1, 0.5] and meta["config"]["image_size"] == 40
    assert json.loads(capsys.readouterr().out)["counts"]["train"]["images"] == 3
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--preset", "medium"])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: preset_config("medium"), r"unknown synthetic preset 'medium'; allowed: \['easy', 'hard'\]"),
        (lambda: preset_config(num_clases=3), r"unknown SyntheticConfig fields \['num_clases'\]"),
        (lambda: SyntheticConfig(num_classes=11), r"num_classes = 11: must be in 1..10"),
        (lambda: SyntheticConfig(object_size=(0.5, 0.2)), r"object_size"),
        (lambda: SyntheticConfig(noise=2.0), r"noise = 2.0"),
    ],
)
def test_bad_config(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
