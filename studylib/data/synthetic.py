"""The embedded synthetic dataset: textured shapes on textured backgrounds, in COCO format.

Deterministic from a seed (same config -> byte-identical files), generated with vectorized numpy
at a few ms per 128^2 image. Each image holds several objects of `num_classes` categories
(disc, square, triangle, star, ring, ...), each class with its own hue and shading pattern, at a
wide range of scales, placed in order with limited occlusion; the masks are the VISIBLE parts
after later objects are drawn (so they never overlap) and fully hidden objects are dropped.
Category ids are odd (1, 3, 5, ...) so that loaders must map ids to contiguous labels.

Layout: DIR/annotations/instances_{train,val}.json, DIR/images/{train,val}/*.png,
DIR/unlabeled/*.png (same distribution, for pre-training), DIR/meta.json (config + counts).

    python -m studylib.data.synthetic --out data/synthetic [--preset easy|hard] [--seed 0 ...]
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SHAPES = ("disc", "square", "triangle", "star", "ring", "cross", "ellipse", "hexagon", "diamond", "crescent")
SHADINGS = ("radial", "linear", "stripes", "checker", "spots", "flat")
SPLITS = ("train", "val", "unlabeled")
_MAX_TRIES = 10  # placements tried per object before it is skipped for too much occlusion


@dataclass(frozen=True)
class SyntheticConfig:
    """Difficulty and size of the synthetic dataset (sizes are fractions of the image side)."""

    seed: int = 0
    image_size: int = 128
    num_train: int = 800
    num_val: int = 200
    num_unlabeled: int = 800
    num_classes: int = 4  # first K of SHAPES, one hue and shading each
    objects_per_image: tuple[int, int] = (1, 4)  # inclusive range
    object_size: tuple[float, float] = (0.10, 0.45)  # object extent / image side, log-uniform
    max_occlusion: float = 0.4  # later objects may hide at most this fraction of an earlier one
    shading: float = 0.25  # strength of the class's shading pattern (0 = flat colour)
    color_jitter: float = 0.06  # per-instance colour noise (large: colour no longer tells the class)
    background_texture: float = 0.12  # amplitude of smooth and fine background variation
    clutter: int = 0  # unlabeled distractor strokes and blobs per image
    noise: float = 0.02  # std of Gaussian pixel noise, image in [0, 1]

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"SyntheticConfig.{name} = {getattr(self, name)!r}: {rule}")

        if self.image_size < 16:
            raise bad("image_size", "must be >= 16")
        for name in ("num_train", "num_val", "num_unlabeled", "clutter"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if not 1 <= self.num_classes <= len(SHAPES):
            raise bad("num_classes", f"must be in 1..{len(SHAPES)} (one per shape in {SHAPES})")
        lo, hi = self.objects_per_image
        if not 0 <= lo <= hi:
            raise bad("objects_per_image", "must be (low, high) with 0 <= low <= high")
        lo, hi = self.object_size
        if not 0 < lo <= hi <= 1:
            raise bad("object_size", "must be (low, high) with 0 < low <= high <= 1")
        for name in ("max_occlusion", "shading", "color_jitter", "background_texture", "noise"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(name, "must be in [0, 1]")


PRESETS: dict[str, dict[str, Any]] = {
    # solid or gently shaded shapes told apart by shape AND colour, on soft backgrounds
    "easy": {},
    # heavy textures, colour uninformative, cluttered noisy backgrounds, more and smaller objects
    "hard": dict(
        num_classes=6,
        objects_per_image=(2, 8),
        object_size=(0.06, 0.5),
        max_occlusion=0.6,
        shading=0.6,
        color_jitter=0.35,
        background_texture=0.45,
        clutter=10,
        noise=0.08,
    ),
}


def preset_config(preset: str = "easy", **overrides: Any) -> SyntheticConfig:
    """A preset with field overrides; unknown presets or fields raise naming the allowed ones."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; allowed: {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown SyntheticConfig fields {unknown}; allowed: {sorted(fields)}")
    values = {**PRESETS[preset], **overrides}
    for name in ("objects_per_image", "object_size"):
        if name in values:
            values[name] = tuple(values[name])
    return SyntheticConfig(**values)


# ---------------------------------------------------------------- drawing


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of a shape in local coordinates where the shape fits the unit disc."""
    r2 = u * u + v * v
    au, av = np.abs(u), np.abs(v)
    if shape == "disc":
        return r2 <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.7
    if shape == "triangle":
        return (v >= -0.5) & (v <= 1.0 - np.sqrt(3.0) * au)
    if shape == "star":  # five points: radius interpolates between valleys (0.42) and tips (1)
        t = (np.arctan2(v, u) * 5 / (2 * np.pi) + 0.25) % 1.0
        return np.sqrt(r2) <= 0.42 + 0.58 * np.abs(2 * t - 1)
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.3)
    if shape == "cross":
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "ellipse":
        return u * u + (v / 0.55) ** 2 <= 1.0
    if shape == "hexagon":
        return (av <= 0.866) & (np.sqrt(3.0) * au + av <= np.sqrt(3.0))
    if shape == "diamond":
        return au / 0.55 + av <= 1.0
    if shape == "crescent":
        return (r2 <= 1.0) & ((u - 0.5) ** 2 + v * v >= 0.6)
    raise ValueError(f"unknown shape {shape!r}; allowed: {SHAPES}")


def shading_pattern(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A class's shading in [-1, 1] over the object's local coordinates."""
    if kind == "radial":
        return 1.0 - 2.0 * np.minimum(np.sqrt(u * u + v * v), 1.0)
    if kind == "linear":
        return np.clip(u, -1.0, 1.0)
    if kind == "stripes":
        return np.sin(3.0 * np.pi * u)
    if kind == "checker":
        return np.sign(np.sin(2.5 * np.pi * u) * np.sin(2.5 * np.pi * v))
    if kind == "spots":
        return np.cos(3.0 * np.pi * u) * np.cos(3.0 * np.pi * v)
    if kind == "flat":
        return np.zeros_like(u)
    raise ValueError(f"unknown shading {kind!r}; allowed: {SHADINGS}")


def class_colors(num_classes: int) -> np.ndarray:
    """(K, 3) saturated RGB in [0, 1], hues spread evenly."""
    return np.array([colorsys.hsv_to_rgb((k / num_classes + 0.05) % 1.0, 0.75, 0.9) for k in range(num_classes)])


def smooth_field(rng: np.random.Generator, size: int, grid: int, channels: int = 3) -> np.ndarray:
    """Random (size, size, channels) field in about [-1, 1], bilinear from a grid x grid lattice."""
    pos = (np.arange(size) + 0.5) / size * (grid - 1)
    lo = np.minimum(pos.astype(int), grid - 2)
    frac = pos - lo
    interp = np.zeros((size, grid))
    interp[np.arange(size), lo] = 1 - frac
    interp[np.arange(size), lo + 1] = frac
    lattice = rng.uniform(-1, 1, (grid, grid, channels))
    return np.stack([interp @ lattice[..., c] @ interp.T for c in range(channels)], axis=-1)


def draw_background(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """Desaturated base colour + smooth and fine texture + unlabeled clutter, (S, S, 3) float."""
    s = cfg.image_size
    img = rng.uniform(0.3, 0.6) + 0.05 * rng.normal(size=3) + np.zeros((s, s, 3))
    img += cfg.background_texture * (smooth_field(rng, s, 4) + 0.5 * smooth_field(rng, s, max(4, s // 8)))
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float64) if cfg.clutter else (None, None)
    for _ in range(cfg.clutter):
        color = rng.uniform(0, 1, 3)
        if rng.random() < 0.5:  # a thick stroke: distance to a segment below a width
            p, q = rng.uniform(0, s, 2), rng.uniform(0, s, 2)
            d = q - p
            t = np.clip(((xs - p[0]) * d[0] + (ys - p[1]) * d[1]) / max(d @ d, 1e-6), 0, 1)
            hit = (xs - p[0] - t * d[0]) ** 2 + (ys - p[1] - t * d[1]) ** 2 <= rng.uniform(0.5, 0.02 * s + 1) ** 2
        else:  # a blob: threshold of a smooth random field
            hit = smooth_field(rng, s, 6, 1)[..., 0] > rng.uniform(0.55, 0.8)
        img[hit] = color
    return img


def draw_image(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[np.ndarray, list[tuple[int, np.ndarray]], int]:
    """One image: uint8 (S, S, 3), [(class index, visible bool mask)], number of objects dropped."""
    s = cfg.image_size
    img = draw_background(rng, cfg)
    ids = np.zeros((s, s), dtype=np.int32)  # 0 = background, k = k-th placed object
    colors = class_colors(cfg.num_classes)
    full_area: list[int] = []
    hidden: list[int] = []
    classes: list[int] = []
    log_lo, log_hi = np.log(cfg.object_size[0] * s), np.log(cfg.object_size[1] * s)
    for _ in range(int(rng.integers(cfg.objects_per_image[0], cfg.objects_per_image[1] + 1))):
        k = int(rng.integers(cfg.num_classes))
        for _try in range(_MAX_TRIES):
            half = np.exp(rng.uniform(log_lo, log_hi)) / 2
            cx, cy = rng.uniform(0.2 * half, s - 0.2 * half, 2)
            theta = rng.uniform(0, 2 * np.pi)
            x0, x1 = max(int(cx - half), 0), min(int(np.ceil(cx + half)) + 1, s)
            y0, y1 = max(int(cy - half), 0), min(int(np.ceil(cy + half)) + 1, s)
            ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
            dx, dy = (xs + 0.5 - cx) / half, (ys + 0.5 - cy) / half
            u = np.cos(theta) * dx + np.sin(theta) * dy
            v = -np.sin(theta) * dx + np.cos(theta) * dy
            inside = shape_mask(SHAPES[k], u, v)
            area = int(inside.sum())
            if area < 4:
                continue
            covered = np.bincount(ids[y0:y1, x0:x1][inside], minlength=len(classes) + 1)[1:]
            if any(hidden[j] + covered[j] > cfg.max_occlusion * full_area[j] for j in np.flatnonzero(covered)):
                continue
            break
        else:
            continue  # no placement with acceptable occlusion: skip this object
        for j in np.flatnonzero(covered):
            hidden[j] += int(covered[j])
        color = colors[k] + cfg.color_jitter * rng.normal(size=3)
        pattern = shading_pattern(SHADINGS[k % len(SHADINGS)], u, v)
        patch = color * (1.0 + cfg.shading * pattern[..., None])
        img[y0:y1, x0:x1][inside] = patch[inside]
        ids[y0:y1, x0:x1][inside] = len(classes) + 1
        classes.append(k)
        full_area.append(area)
        hidden.append(0)
    img += cfg.noise * rng.normal(size=img.shape)
    pixels = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    objects = [(k, ids == i + 1) for i, k in enumerate(classes)]
    visible = [(k, m) for k, m in objects if m.any()]
    return pixels, visible, len(objects) - len(visible)


# ---------------------------------------------------------------- writing


def _rng(cfg: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    """One independent stream per image: any image can be regenerated alone."""
    return np.random.default_rng([cfg.seed, SPLITS.index(split), index])


def _write_png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels, mode="RGB").save(path, format="PNG", compress_level=1)  # fast; PIL writes no timestamps


def categories(cfg: SyntheticConfig) -> list[dict[str, Any]]:
    """COCO categories with odd, non-contiguous ids 1, 3, 5, ..."""
    return [{"id": 2 * k + 1, "name": SHAPES[k], "supercategory": "shape"} for k in range(cfg.num_classes)]


def _write_split(root: Path, cfg: SyntheticConfig, split: str, count: int) -> dict[str, int]:
    """Draw and write one split; labelled splits also get their instances_{split}.json."""
    image_dir = root / "unlabeled" if split == "unlabeled" else root / "images" / split
    image_dir.mkdir(parents=True)
    images, annotations, dropped = [], [], 0
    s = cfg.image_size
    for i in range(count):
        pixels, objects, n_dropped = draw_image(_rng(cfg, split, i), cfg)
        name = f"{split}_{i:06d}.png"
        _write_png(image_dir / name, pixels)
        dropped += n_dropped
        images.append({"id": i + 1, "file_name": name, "height": s, "width": s})
        if not objects:
            continue
        rles = mask_utils.encode(np.asfortranarray(np.stack([m for _, m in objects], axis=-1).astype(np.uint8)))
        for (k, m), rle, box in zip(objects, rles, mask_utils.toBbox(rles).tolist()):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": 2 * k + 1,
                    "segmentation": {"size": [s, s], "counts": rle["counts"].decode("ascii")},
                    "area": int(m.sum()),
                    "bbox": box,
                    "iscrowd": 0,
                }
            )
    if split == "unlabeled":
        return {"images": count}
    coco = {
        "info": {"description": "studylib synthetic shapes", "version": str(FORMAT_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories(cfg),
    }
    _write_json(root / "annotations" / f"instances_{split}.json", coco)
    return {"images": count, "annotations": len(annotations), "dropped_occluded": dropped}


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n")


def _config_dict(cfg: SyntheticConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, as read back from JSON


def _existing(out: Path, cfg: SyntheticConfig) -> dict[str, Any] | None:
    """The meta of a complete dataset at `out` generated from `cfg`, else None."""
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("format_version") != FORMAT_VERSION or meta.get("config") != _config_dict(cfg):
        return None
    dirs = {"train": out / "images" / "train", "val": out / "images" / "val", "unlabeled": out / "unlabeled"}
    for split, d in dirs.items():
        if not d.is_dir() or len(os.listdir(d)) != meta["counts"][split]["images"]:
            return None
    return meta


def generate(out_dir: str | os.PathLike, cfg: SyntheticConfig = SyntheticConfig(), *, overwrite: bool = False) -> dict:
    """Write the dataset to `out_dir` atomically (temp dir, then rename); return its meta.

    If `out_dir` already holds the dataset of this config it is kept as is. A different
    dataset there raises unless `overwrite`; a non-empty folder without meta.json always raises.
    """
    out = Path(out_dir)
    if out.exists():
        meta = _existing(out, cfg)
        if meta is not None:
            log.info("%s: synthetic dataset up to date", out)
            return meta
        if any(out.iterdir()):
            if not (out / "meta.json").is_file():
                raise FileExistsError(f"{out}: not empty and has no meta.json; refusing to replace it")
            if not overwrite:
                raise FileExistsError(
                    f"{out}: holds a different or incomplete synthetic dataset (meta.json differs from "
                    f"the requested config); pass overwrite=True (--overwrite) or remove it"
                )
    start = time.perf_counter()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        counts = {split: _write_split(tmp, cfg, split, getattr(cfg, f"num_{split}")) for split in SPLITS}
        meta = {
            "format_version": FORMAT_VERSION,
            "config": _config_dict(cfg),
            "counts": counts,
            "categories": categories(cfg),
        }
        _write_json(tmp / "meta.json", meta)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n = sum(c["images"] for c in counts.values())
    log.info("%s: %d images in %.1f s", out, n, time.perf_counter() - start)
    return meta


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m studylib.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--preset", default="easy", choices=sorted(PRESETS), help="difficulty preset")
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset at --out")
    for f in dataclasses.fields(SyntheticConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type.startswith("tuple"):
            elem = int if "int" in f.type else float
            parser.add_argument(flag, type=elem, nargs=2, metavar=("LOW", "HIGH"), help="default: preset's")
        else:
            parser.add_argument(flag, type=int if f.type == "int" else float, help="default: preset's")
    args = parser.parse_args(argv)
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(SyntheticConfig) if getattr(args, f.name) is not None
    }
    cfg = preset_config(args.preset, **overrides)
    meta = generate(args.out, cfg, overwrite=args.overwrite)
    print(json.dumps({"out": args.out, "counts": meta["counts"]}, sort_keys=True))
    return meta


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
