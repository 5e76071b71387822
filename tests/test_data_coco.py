"""CocoInstances: parity with pycocotools on real COCO images, odd inputs, and errors that name the culprit."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from studylib.data import CocoInstances, SampleError, collate_fn

SHARED = Path(__file__).resolve().parents[2] / "shared"
TINYCOCO = SHARED / "data" / "tinycoco"


@pytest.fixture(scope="module", params=["train2017", "val2017"])
def tiny(request) -> CocoInstances:
    if not (TINYCOCO / "annotations").is_dir():
        pytest.skip(f"shared tinycoco data not found at {TINYCOCO} (lives outside the repo)")
    split = request.param
    return CocoInstances(TINYCOCO / "annotations" / f"instances_{split}.json", TINYCOCO / "images" / split)


def test_matches_pycocotools(tiny: CocoInstances) -> None:
    coco = tiny.coco
    for index, image_id in enumerate(tiny.image_ids):
        image, target = tiny[index]
        info = coco.imgs[image_id]
        assert image.dtype == torch.float32 and image.shape == (3, info["height"], info["width"])
        assert 0.0 <= image.min() and image.max() <= 1.0
        expected_pixels = np.asarray(Image.open(tiny.image_dir / info["file_name"]).convert("RGB"))
        assert torch.equal(
            (image * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(expected_pixels.copy())
        )

        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False))
        assert target["image_id"] == image_id
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (len(anns), *image.shape[1:])
        for i, ann in enumerate(anns):
            assert torch.equal(target["masks"][i], torch.from_numpy(coco.annToMask(ann)))
            x, y, w, h = ann["bbox"]
            assert torch.allclose(target["boxes"][i], torch.tensor([x, y, x + w, y + h], dtype=torch.float32))
            assert tiny.label_to_category_id[int(target["labels"][i])] == ann["category_id"]
            assert target["area"][i] == pytest.approx(ann["area"], rel=1e-6)
        assert target["iscrowd"].sum() == 0


def test_noncontiguous_category_ids(tiny: CocoInstances) -> None:
    cat_ids = sorted(tiny.coco.getCatIds())
    assert cat_ids[-1] == 90 and len(cat_ids) == 80  # COCO's ids have gaps
    assert tiny.num_classes == 80
    assert list(tiny.label_to_category_id) == list(range(1, 81))
    assert list(tiny.label_to_category_id.values()) == cat_ids
    assert all(tiny.category_id_to_label[c] == label for label, c in tiny.label_to_category_id.items())


def test_crowd_left_out_of_targets_but_kept_for_evaluation(tiny: CocoInstances) -> None:
    crowd = tiny.coco.loadAnns(tiny.coco.getAnnIds(iscrowd=True))
    assert crowd and tiny.num_crowd == len(crowd)
    kept = CocoInstances(tiny.ann_file, tiny.image_dir, keep_crowd=True)
    for ann in crowd:
        index = tiny.image_ids.index(ann["image_id"])
        _, target = tiny[index]
        n_all = len(tiny.coco.getAnnIds(imgIds=[ann["image_id"]]))
        assert len(target["labels"]) == n_all - sum(a["image_id"] == ann["image_id"] for a in crowd)
        _, full = kept[index]
        assert len(full["labels"]) == n_all
        i = tiny.coco.getAnnIds(imgIds=[ann["image_id"]]).index(ann["id"])
        assert full["iscrowd"][i] == 1
        assert isinstance(ann["segmentation"]["counts"], list)  # uncompressed RLE in COCO
        assert torch.equal(full["masks"][i], torch.from_numpy(tiny.coco.annToMask(ann)))


def test_images_without_annotations(tiny: CocoInstances) -> None:
    empty = [i for i in tiny.image_ids if not tiny.coco.getAnnIds(imgIds=[i])]
    if not empty:
        pytest.skip(f"{tiny.ann_file.name} has no image without annotations")
    image, target = tiny[tiny.image_ids.index(empty[0])]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, *image.shape[1:])
    images, targets = collate_fn([tiny[0], (image, target)])
    assert len(images) == 2 and targets[1]["image_id"] == empty[0]


# ---------------------------------------------------------------- hand-made datasets


def _write_dataset(root: Path, images: dict[str, Image.Image], anns: list[dict], categories=(3, 7)) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (name, im) in enumerate(images.items()):
        im.save(root / "img" / name)
        w, h = im.size
        entries.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    data = {"images": entries, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in categories]}
    path = root / "instances_x.json"
    path.write_text(json.dumps(data))
    return path


def _ann(ann_id: int, image_id: int, bbox, segmentation=None, category_id: int = 3, iscrowd: int = 0) -> dict:
    x, y, w, h = bbox
    seg = segmentation if segmentation is not None else [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": list(bbox),
        "segmentation": seg,
        "area": float(w * h),
        "iscrowd": iscrowd,
    }


def test_polygons_multipart_and_rle(tmp_path: Path) -> None:
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[5:12, 20:35] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    anns = [
        _ann(1, 1, (2, 2, 10, 20), [[2, 2, 12, 2, 12, 10, 2, 10], [2, 14, 12, 14, 7, 22]]),  # two parts
        _ann(2, 1, (20, 5, 15, 7), rle, category_id=7),
    ]
    path = _write_dataset(tmp_path, {"a.png": Image.new("RGB", (40, 30), (10, 20, 30))}, anns)
    ds = CocoInstances(path, tmp_path / "img")
    image, target = ds[0]
    for i, ann in enumerate(ds.coco.loadAnns([1, 2])):
        assert torch.equal(target["masks"][i], torch.from_numpy(ds.coco.annToMask(ann)))
    assert target["masks"][0][16, 7] == 1 and target["masks"][0][12, 7] == 0  # the second part, not the gap
    assert torch.equal(target["masks"][1], torch.from_numpy(mask))
    assert target["labels"].tolist() == [1, 2]
    assert torch.allclose(image[:, 0, 0], torch.tensor([10, 20, 30]) / 255)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_grayscale_rgba_palette_16bit_become_rgb(tmp_path: Path, mode: str) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8))
    if mode == "I;16":
        gray = np.asarray(rgb.convert("L")).astype(np.uint16) * 257
        im, expected = Image.fromarray(gray), np.asarray(rgb.convert("L").convert("RGB"))
    else:
        im = rgb.convert(mode)
        expected = np.asarray(im.convert("RGB"))
    path = _write_dataset(tmp_path, {"a.png": im}, [_ann(1, 1, (1, 1, 5, 5))])
    image, _ = CocoInstances(path, tmp_path / "img")[0]
    assert image.shape == (3, 12, 16)
    assert torch.equal((image * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(expected))


def test_exif_orientation_applied(tmp_path: Path) -> None:
    raw = Image.fromarray(np.random.default_rng(1).integers(0, 256, (10, 20, 3), dtype=np.uint8))  # w 20, h 10
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: w 10, h 20
    (tmp_path / "img").mkdir()
    raw.save(tmp_path / "img" / "a.jpg", exif=exif.tobytes(), quality=100)
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 10}],
        "annotations": [],
        "categories": [{"id": 1, "name": "x"}],
    }
    (tmp_path / "ok.json").write_text(json.dumps(data))
    image, _ = CocoInstances(tmp_path / "ok.json", tmp_path / "img")[0]
    decoded = Image.open(tmp_path / "img" / "a.jpg")
    expected = np.asarray(decoded.transpose(Image.Transpose.ROTATE_270).convert("RGB"))
    assert image.shape == (3, 20, 10)
    assert torch.equal((image * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(expected))
    data["images"][0].update(height=10, width=20)  # annotations in raw (unrotated) size: a clear error
    (tmp_path / "raw.json").write_text(json.dumps(data))
    with pytest.raises(SampleError, match=r"image id 1 .*a\.jpg.*10x20.*20x10"):
        CocoInstances(tmp_path / "raw.json", tmp_path / "img")[0]


# ---------------------------------------------------------------- errors


def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    bad = tmp_path / "instances_bad.json"
    bad.write_text('{"images": [}')
    with pytest.raises(ValueError, match=r"instances_bad\.json: malformed JSON"):
        CocoInstances(bad, tmp_path / "img")
    bad.write_text('{"images": []}')
    with pytest.raises(ValueError, match=r"instances_bad\.json: key 'annotations'"):
        CocoInstances(bad, tmp_path / "img")


def test_missing_image_file_named(tmp_path: Path) -> None:
    path = _write_dataset(tmp_path, {"a.png": Image.new("RGB", (8, 8))}, [])
    data = json.loads(path.read_text())
    data["images"].append({"id": 2, "file_name": "gone.png", "height": 8, "width": 8})
    path.write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match=r"instances_x\.json: 1 image files missing .*gone\.png \(image id 2\)"):
        CocoInstances(path, tmp_path / "img")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("category_id", 5, r"annotation id 1: unknown category_id 5 \(categories: \[3, 7\]\)"),
        ("image_id", 99, r"annotation id 1: unknown image_id 99"),
        ("bbox", [1, 2, 3], r"annotation id 1: bbox must be \[x, y, w, h\]"),
    ],
)
def test_bad_annotation_named(tmp_path: Path, field: str, value, message: str) -> None:
    ann = _ann(1, 1, (1, 1, 4, 4))
    ann[field] = value
    path = _write_dataset(tmp_path, {"a.png": Image.new("RGB", (8, 8))}, [ann])
    with pytest.raises(ValueError, match=r"instances_x\.json: " + message):
        CocoInstances(path, tmp_path / "img")


def test_degenerate_boxes_clipped_or_dropped_and_logged(tmp_path: Path, caplog) -> None:
    anns = [
        _ann(1, 1, (2, 2, 4, 4)),
        _ann(2, 1, (10, 3, 20, 4)),  # sticks out on the right: clipped to x2 = 16
        _ann(3, 1, (5, 5, 0, 3)),  # zero width: dropped
        _ann(4, 1, (20, 2, 5, 5)),  # entirely outside: zero area after clipping, dropped
    ]
    path = _write_dataset(tmp_path, {"a.png": Image.new("RGB", (16, 12))}, anns)
    with caplog.at_level(logging.WARNING, logger="studylib.data.coco"):
        ds = CocoInstances(path, tmp_path / "img")
    assert (
        "1 boxes clipped to their image (ann ids [2]), 2 dropped for zero area after clipping (ann ids [3, 4])"
        in caplog.text
    )
    assert "instances_x.json" in caplog.text
    _, target = ds[0]
    assert target["boxes"].tolist() == [[2, 2, 6, 6], [10, 3, 16, 7]]
    assert (ds.num_clipped, ds.num_dropped) == (1, 2)


def test_bad_sample_error_names_image_id_and_file(tmp_path: Path) -> None:
    path = _write_dataset(
        tmp_path, {"a.png": Image.new("RGB", (8, 8)), "b.png": Image.new("RGB", (8, 8))}, [_ann(1, 2, (1, 1, 3, 3))]
    )
    (tmp_path / "img" / "b.png").write_bytes(b"not a png")
    ds = CocoInstances(path, tmp_path / "img")
    ds[0]
    with pytest.raises(SampleError, match=r"instances_x\.json: image id 2 \(.*b\.png\): .*UnidentifiedImageError"):
        ds[1]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_fn)
    with pytest.raises(SampleError, match=r"image id 2"):
        next(iter(loader))
