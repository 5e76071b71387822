"""COCO-format instance segmentation as a map-style dataset of torchvision detection targets.

`CocoInstances(ann_file, image_dir, transforms=None)` reads any `instances_*.json` (polygons with
several parts, compressed and uncompressed RLE, crowd regions, images without annotations) and an
image folder (grayscale, palette, RGBA and 16-bit images become RGB; EXIF orientation is applied).
Items are `(image, target)` exactly as `torchvision.models.detection.MaskRCNN` takes them.

Everything that is wrong with the annotation file is reported when the dataset is built, with the
file and the annotation at fault; anything that goes wrong later while loading one sample is
re-raised naming the image id and file.

References: pycocotools `coco.py`, torchvision `references/detection/coco_utils.py`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

log = logging.getLogger(__name__)

Transforms = Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]

_ANN_KEYS = ("id", "image_id", "category_id", "bbox", "segmentation")
_IMAGE_KEYS = ("id", "file_name", "height", "width")
_SHOWN = 5  # how many offending ids an error or log line lists


class SampleError(RuntimeError):
    """Loading one sample failed; the message names the image id and file."""


def load_coco(ann_file: str | os.PathLike) -> COCO:
    """Read and check an instances_*.json into a pycocotools `COCO` (errors name file and annotation)."""
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be an object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: key {key!r} is missing or not a list")

    images = _unique_ids(path, "images", data["images"], _IMAGE_KEYS)
    categories = _unique_ids(path, "categories", data["categories"], ("id",))
    _unique_ids(path, "annotations", data["annotations"], _ANN_KEYS)
    filled = []
    for ann in data["annotations"]:
        where = f"{path}: annotation id {ann['id']}"
        if ann["image_id"] not in images:
            raise ValueError(f"{where}: unknown image_id {ann['image_id']!r}")
        if ann["category_id"] not in categories:
            raise ValueError(f"{where}: unknown category_id {ann['category_id']!r} (categories: {sorted(categories)})")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"{where}: bbox must be [x, y, w, h] numbers, got {bbox!r}")
        if "iscrowd" not in ann or "area" not in ann:  # COCOeval needs both
            ann.setdefault("iscrowd", 0)
            ann.setdefault("area", float(bbox[2] * bbox[3]))
            filled.append(ann["id"])
    if filled:
        log.warning(
            "%s: %d annotations lacked iscrowd/area; set iscrowd=0, area=bbox area (ids %s)",
            path,
            len(filled),
            filled[:_SHOWN],
        )

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def _unique_ids(path: Path, key: str, entries: list, required: tuple[str, ...]) -> dict[Any, dict]:
    """Check that `entries` are dicts with `required` keys and unique ids; return id -> entry."""
    out: dict[Any, dict] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {key}[{i}] must be an object, got {type(entry).__name__}")
        missing = [k for k in required if k not in entry]
        if missing:
            raise ValueError(f"{path}: {key}[{i}] (id {entry.get('id')!r}) lacks {missing}")
        if entry["id"] in out:
            raise ValueError(f"{path}: duplicate id {entry['id']!r} in {key}")
        out[entry["id"]] = entry
    return out


def read_image(path: str | Path, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """Decode an image file to uint8 RGB (3, H, W), EXIF orientation applied; check its size when given.
    An unreadable file raises a ValueError naming it and PIL's error."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16"):  # 16-bit grayscale: PIL's convert("RGB") would clip it
                arr = (np.asarray(im, dtype=np.float32) / 257.0).round().astype(np.uint8)
                im = Image.fromarray(arr, mode="L")
            arr = np.asarray(im.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    if height is not None and arr.shape[:2] != (height, width):
        raise ValueError(
            f"{path}: image is {arr.shape[1]}x{arr.shape[0]} (w x h, after EXIF orientation) "
            f"but the annotation file says {width}x{height}"
        )
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


class CocoInstances(Dataset):
    """COCO instances as `(image, target)`: image float (3, H, W) in [0, 1]; target dict with
    `boxes` (N, 4) xyxy float, `labels` (N,) int64 in 1..K, `masks` (N, H, W) uint8, `image_id`
    (int), `area` (N,) float, `iscrowd` (N,) int64.

    Crowd regions are left out of the targets (as torchvision and detectron2 do: the loss has no
    ignore regions), so `iscrowd` is all zeros; they stay in `coco`, so COCO evaluation respects
    them. `keep_crowd=True` keeps them with iscrowd=1 (for visualization, not for training).
    Boxes are the annotation's `bbox` clipped to the image; boxes of zero area after clipping are
    dropped. Both are counted in one log line when the dataset is built. `area` is the
    annotation's `area` (transforms such as LargeScaleJitter recompute it from the masks).
    Category ids (any, e.g. COCO's 1..90 with gaps) map to contiguous labels 1..K in sorted id
    order; `label_to_category_id` maps back for evaluation.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        transforms: Transforms | None = None,
        *,
        keep_crowd: bool = False,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.keep_crowd = keep_crowd
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"{self.image_dir}: image folder not found (for {self.ann_file})")
        self.coco = load_coco(self.ann_file)

        cat_ids = sorted(self.coco.cats)
        self.label_to_category_id: dict[int, int] = {i + 1: c for i, c in enumerate(cat_ids)}
        self.category_id_to_label: dict[int, int] = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.label_names: dict[int, str] = {i + 1: str(self.coco.cats[c].get("name", c)) for i, c in enumerate(cat_ids)}
        self.num_classes = len(cat_ids)
        self.image_ids: list[int] = sorted(self.coco.imgs)
        self._check_files()
        self._targets = self._index_targets()

    def _check_files(self) -> None:
        """Fail now, naming them, if image files are missing (one directory listing, fast on COCO)."""
        present = set(os.listdir(self.image_dir))
        missing = []
        for i in self.image_ids:
            name = self.coco.imgs[i]["file_name"]
            found = name in present if "/" not in name else (self.image_dir / name).is_file()
            if not found:
                missing.append(f"{name} (image id {i})")
        if missing:
            raise FileNotFoundError(
                f"{self.ann_file}: {len(missing)} image files missing from {self.image_dir}: "
                f"{', '.join(missing[:_SHOWN])}{' ...' if len(missing) > _SHOWN else ''}"
            )

    def _index_targets(self) -> dict[int, dict[str, Any]]:
        """Per image: kept annotations, clipped xyxy boxes, labels, area, iscrowd."""
        clipped, dropped, crowd = [], [], 0
        targets = {}
        for image_id in self.image_ids:
            info = self.coco.imgs[image_id]
            h, w = info["height"], info["width"]
            anns, boxes = [], []
            for ann in self.coco.imgToAnns.get(image_id, []):
                if ann.get("iscrowd", 0) and not self.keep_crowd:
                    crowd += 1
                    continue
                x, y, bw, bh = ann["bbox"]
                box = [x, y, x + bw, y + bh]
                inside = [
                    min(max(box[0], 0), w),
                    min(max(box[1], 0), h),
                    min(max(box[2], 0), w),
                    min(max(box[3], 0), h),
                ]
                if inside[2] <= inside[0] or inside[3] <= inside[1]:
                    dropped.append(ann["id"])
                    continue
                if inside != box:
                    clipped.append(ann["id"])
                anns.append(ann)
                boxes.append(inside)
            targets[image_id] = dict(
                anns=anns,
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                labels=np.asarray([self.category_id_to_label[a["category_id"]] for a in anns], dtype=np.int64),
                area=np.asarray([a["area"] for a in anns], dtype=np.float32),
                iscrowd=np.asarray([a.get("iscrowd", 0) for a in anns], dtype=np.int64),
            )
        if clipped or dropped:
            log.warning(
                "%s: %d boxes clipped to their image (ann ids %s), %d dropped for zero area after "
                "clipping (ann ids %s)",
                self.ann_file,
                len(clipped),
                clipped[:_SHOWN],
                len(dropped),
                dropped[:_SHOWN],
            )
        if crowd:
            log.info("%s: %d crowd regions left out of the training targets", self.ann_file, crowd)
        self.num_clipped, self.num_dropped, self.num_crowd = len(clipped), len(dropped), crowd
        return targets

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.image_ids[index]
        path = self.image_dir / self.coco.imgs[image_id]["file_name"]
        try:
            image, target = self.load(image_id)
            if self.transforms is not None:
                image, target = self.transforms(image, target)
            return _finalize(image, target)
        except Exception as e:
            raise SampleError(f"{self.ann_file}: image id {image_id} ({path}): {type(e).__name__}: {e}") from e

    def load(self, image_id: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """The untransformed sample: uint8 image and a target of tv_tensors (for v2 transforms)."""
        info = self.coco.imgs[image_id]
        h, w = info["height"], info["width"]
        image = tv_tensors.Image(read_image(self.image_dir / info["file_name"], h, w))
        t = self._targets[image_id]
        if t["anns"]:
            rles = [self.coco.annToRLE(a) for a in t["anns"]]
            masks = np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))
        else:
            masks = np.zeros((0, h, w), dtype=np.uint8)
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(t["boxes"]), format="XYXY", canvas_size=(h, w)),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "labels": torch.from_numpy(t["labels"]),
            "image_id": image_id,
            "area": torch.from_numpy(t["area"]),
            "iscrowd": torch.from_numpy(t["iscrowd"]),
        }
        return image, target

    def __repr__(self) -> str:
        return (
            f"CocoInstances({str(self.ann_file)!r}, images={len(self)}, classes={self.num_classes}, "
            f"transforms={self.transforms})"
        )


def _finalize(image: Any, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Float image in [0, 1] and plain tensors, the dtypes torchvision detection models expect."""
    if not isinstance(image, torch.Tensor):  # a PIL image from a user's transform
        image = F.pil_to_tensor(image)
    image = F.to_dtype(image.as_subclass(torch.Tensor), torch.float32, scale=True)
    out = dict(target)
    for key, dtype in (
        ("boxes", torch.float32),
        ("labels", torch.int64),
        ("masks", torch.uint8),
        ("area", torch.float32),
        ("iscrowd", torch.int64),
    ):
        if key in out:
            out[key] = out[key].as_subclass(torch.Tensor).to(dtype)
    out["image_id"] = int(out["image_id"])
    return image, out


def collate_fn(batch: list) -> tuple:
    """Detection batches are tuples of lists (images differ in size)."""
    return tuple(zip(*batch))
