"""LargeScaleJitter: sizes, boxes and masks transformed together, flip geometry, sanitization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision import tv_tensors

from studylib.data import CocoInstances, LargeScaleJitter, boxes_from_masks, eval_transforms

TINYCOCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinycoco"


def _sample(h: int = 60, w: int = 80) -> tuple[tv_tensors.Image, dict]:
    """Three instances (a rectangle, a disc, a thin bar); image channel 0 holds 40 * label under each."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = torch.stack(
        [
            (yy >= 5) & (yy < 25) & (xx >= 10) & (xx < 40),
            (yy - 40) ** 2 + (xx - 60) ** 2 <= 12**2,
            (yy >= 55) & (yy < 59) & (xx >= 2) & (xx < 70),
        ]
    ).to(torch.uint8)
    labels = torch.tensor([1, 2, 3])
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[1:] = 128
    for m, label in zip(masks, labels):
        image[0][m.bool()] = 40 * label
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes_from_masks(masks), format="XYXY", canvas_size=(h, w)),
        "masks": tv_tensors.Mask(masks),
        "labels": labels,
        "image_id": 7,
        "area": masks.sum(dim=(1, 2)).float(),
        "iscrowd": torch.zeros(3, dtype=torch.int64),
    }
    return tv_tensors.Image(image), target


@pytest.mark.parametrize("seed", range(12))
def test_lsj_sizes_boxes_masks_consistent(seed: int) -> None:
    torch.manual_seed(seed)
    lsj = LargeScaleJitter(64)
    image, target = lsj(*_sample())
    h, w = image.shape[-2:]
    assert h <= 64 and w <= 64
    n = len(target["labels"])
    assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, h, w)
    assert target["area"].shape == (n,) and target["iscrowd"].shape == (n,)
    boxes = target["boxes"]
    assert (
        (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    )
    assert torch.equal(boxes, boxes_from_masks(target["masks"]))  # tight after crop (recomputed)
    assert ((boxes[:, 2] - boxes[:, 0]) >= 1).all() and ((boxes[:, 3] - boxes[:, 1]) >= 1).all()
    assert torch.equal(target["area"], target["masks"].sum(dim=(1, 2)).float())
    # masks and labels stay paired: the image inside each mask carries that label's value
    # (inside = 2 px from the mask's edge, where antialiased resizing does not blur)
    for m, label in zip(target["masks"], target["labels"]):
        assert m.any()
        inner = torch.nn.functional.avg_pool2d(m[None].float(), 5, stride=1, padding=2)[0] > 0.999
        if inner.any():
            assert torch.median(image[0][inner].float()) == pytest.approx(40 * int(label), abs=6)


def test_lsj_covers_the_scale_range_and_crops_large_images() -> None:
    lsj = LargeScaleJitter(64, scale_range=(0.1, 2.0))
    sides = []
    for seed in range(40):
        torch.manual_seed(seed)
        image, _ = lsj(*_sample())
        sides.append(max(image.shape[-2:]))
    assert min(sides) <= 20 and max(sides) == 64  # small images kept small, large ones cropped


def test_fixed_scale_gives_expected_size() -> None:
    image, target = LargeScaleJitter(40, scale_range=(0.5, 0.5), hflip_prob=0.0)(*_sample(60, 80))
    assert image.shape[-2:] == (15, 20)  # fit 80 -> 40, then x0.5
    assert target["masks"].shape[-2:] == (15, 20)


def test_flip_moves_boxes_and_masks() -> None:
    image0, target0 = _sample(64, 64)
    same_image, same = LargeScaleJitter(64, scale_range=(1.0, 1.0), hflip_prob=0.0)(image0, target0)
    assert torch.equal(same_image, image0) and torch.equal(same["boxes"], target0["boxes"])
    flipped_image, flipped = LargeScaleJitter(64, scale_range=(1.0, 1.0), hflip_prob=1.0)(image0, target0)
    x1, y1, x2, y2 = target0["boxes"].unbind(1)
    assert torch.equal(flipped["boxes"], torch.stack([64 - x2, y1, 64 - x1, y2], dim=1))
    assert torch.equal(flipped["masks"], target0["masks"].flip(-1))
    assert torch.equal(flipped_image, image0.flip(-1))
    assert torch.equal(flipped["labels"], target0["labels"])


def test_instances_cropped_away_are_removed_with_their_fields() -> None:
    image, target = _sample(64, 64)
    target["masks"][1] = 0
    target["masks"][1, 60:, 60:] = 1  # a corner speck that a crop of half the image may remove
    seen_removed = False
    for seed in range(30):
        torch.manual_seed(seed)
        out_image, out = LargeScaleJitter(32, scale_range=(2.0, 2.0), hflip_prob=0.0)(image, target)
        n = len(out["labels"])
        assert out["masks"].shape[0] == out["boxes"].shape[0] == out["area"].shape[0] == out["iscrowd"].shape[0] == n
        assert (out["area"] > 0).all()
        seen_removed |= 2 not in out["labels"].tolist()
    assert seen_removed


def test_boxes_from_masks_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    masks = (rng.random((5, 20, 30)) > 0.97).astype(np.uint8)
    masks[4] = 0
    boxes = boxes_from_masks(torch.from_numpy(masks))
    for m, box in zip(masks[:4], boxes[:4]):
        x, y, w, h = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m))).tolist()
        assert box.tolist() == [x, y, x + w, y + h]
    assert boxes[4].tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_size=0), "target_size"),
        (dict(target_size=64, scale_range=(0.0, 2.0)), "scale_range"),
        (dict(target_size=64, scale_range=(2.0, 1.0)), "scale_range"),
        (dict(target_size=64, hflip_prob=1.5), "hflip_prob"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LargeScaleJitter(**kwargs)


def test_eval_transform_only_converts() -> None:
    image, target = _sample()
    out_image, out_target = eval_transforms()(image, target)
    assert out_image.dtype == torch.float32 and torch.allclose(out_image * 255, image.float())
    assert torch.equal(out_target["boxes"], target["boxes"]) and torch.equal(out_target["masks"], target["masks"])


def test_lsj_on_real_coco_at_paper_size() -> None:
    if not (TINYCOCO / "annotations").is_dir():
        pytest.skip(f"shared tinycoco data not found at {TINYCOCO} (lives outside the repo)")
    ds = CocoInstances(
        TINYCOCO / "annotations" / "instances_val2017.json",
        TINYCOCO / "images" / "val2017",
        transforms=LargeScaleJitter(1024),
    )
    torch.manual_seed(0)
    for index in range(3):
        image, target = ds[index]
        assert image.dtype == torch.float32 and max(image.shape[-2:]) <= 1024
        assert torch.equal(target["boxes"], boxes_from_masks(target["masks"]))
        assert target["labels"].min() >= 1 and target["labels"].max() <= ds.num_classes
