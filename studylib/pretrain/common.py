"""What the four pre-training methods share: the image folder, the loop, checkpoint/resume, the loss log.

Determinism: the model is initialized under `torch.manual_seed(seed)`; step `s` reseeds the global
RNG with `step_seed(seed, s)` before it draws its batch (epoch-wise permutations of the corpus)
and its augmentations, masks and drop-path. So a run stopped at any checkpoint and resumed gives
the same weights as an uninterrupted one, bit for bit (on the same machine and thread count).

Files written next to `out_path` (say `mae.pth`): `mae.loss.csv` (step, loss, lr),
`mae.summary.json`, and while running `mae.resume.pth` (full model + optimizer + step, written
atomically every `checkpoint_every` steps, removed when the run completes).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.optim import param_groups_weight_decay
from torch.utils.data import Dataset, default_collate
from torchvision.transforms import v2
from tqdm.auto import tqdm

from ..data.coco import read_image  # noqa: F401 (the one image reader; the methods import it from here)
from ..engine.schedule import build_scheduler
from ..io import atomic_torch_save, atomic_write_text
from .config import PretrainConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


# -- data --------------------------------------------------------------------------------------------
def find_images(image_dir: str | Path) -> list[Path]:
    """All .png/.jpg/.jpeg files under `image_dir` (recursively), sorted; a clear error if none."""
    root = Path(image_dir)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"image folder {root} contains no {'/'.join(IMAGE_EXTENSIONS)} images (searched recursively)")
    return files


def normalize() -> v2.Transform:
    """uint8 -> float in [0, 1] -> ImageNet mean/std, as the originals (and the detector) do."""
    return v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    )


class ImageFolder(Dataset):
    """Unlabeled images of a folder (recursively); items are `transform(uint8 image)`."""

    def __init__(self, image_dir: str | Path, transform: Callable[[torch.Tensor], Any]):
        self.root = Path(image_dir)
        self.files = find_images(self.root)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        return self.transform(read_image(self.files[i]))


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H/p * W/p, p*p*3), patches in row-major order, pixels (row, col, channel)."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // p, p, W // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch zero mean, unit variance over its pixels (MAE's normalized-pixel target)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


# -- determinism ---------------------------------------------------------------------------------
def step_seed(seed: int, step: int) -> int:
    """The global-RNG seed of one step: distinct per (seed, step), independent of resumption."""
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of step `step`: a stream of per-epoch permutations of range(n), cut into batches."""
    out, cache = [], {}
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch = pos // n
        if epoch not in cache:
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(cache[epoch][pos % n]))
    return out


# -- files ---------------------------------------------------------------------------------------
def atomic_save(obj: Any, path: Path) -> None:
    """torch.save that never leaves a half-written file (studylib.io)."""
    atomic_torch_save(path, obj)


@dataclass(frozen=True)
class RunPaths:
    """The files of one run, all next to the checkpoint."""

    checkpoint: Path
    state: Path
    loss_log: Path
    summary: Path

    @classmethod
    def of(cls, out_path: str | Path) -> "RunPaths":
        out = Path(out_path)
        stem = out.name[: -len(out.suffix)] if out.suffix else out.name
        return cls(
            out,
            out.with_name(f"{stem}.resume.pth"),
            out.with_name(f"{stem}.loss.csv"),
            out.with_name(f"{stem}.summary.json"),
        )


def write_loss_log(path: Path, history: Sequence[tuple[int, float, float]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["step", "loss", "lr"])
    w.writerows((s, f"{loss:.6g}", f"{lr:.6g}") for s, loss, lr in history)
    atomic_write_text(path, buf.getvalue())


# -- the loop ------------------------------------------------------------------------------------
@dataclass
class Task:
    """A method, ready to train: `model(batch, progress) -> loss`, its data and its release layout."""

    model: nn.Module
    dataset: Dataset
    release: Callable[[int, torch.optim.Optimizer], dict]  # (step, optimizer) -> official checkpoint dict
    no_weight_decay: tuple[str, ...] = ()  # fnmatch patterns of parameter names
    collate: Callable[[list], Any] = default_collate
    prepare: Callable[[], None] | None = None  # fresh runs only (e.g. fit BEiT's tokenizer)
    write_extras: Callable[[Path], dict[str, str]] | None = None  # sidecar files next to the checkpoint
    extra: dict[str, Any] = field(default_factory=dict)  # goes into the summary


def _load_state(paths: RunPaths, method: str, cfg: PretrainConfig) -> dict:
    if not paths.state.is_file():
        raise ValueError(f"--resume: no resume state {paths.state} (it is removed once a run completes)")
    state = torch.load(paths.state, map_location="cpu", weights_only=False)
    if state.get("method") != method:
        raise ValueError(f"resume state {paths.state} is for method {state.get('method')!r}, not {method!r}")
    saved, now = state["config"], cfg.result_dict()
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff)
        raise ValueError(f"resume state {paths.state} was written with a different config ({detail})")
    return state


def train(task: Task, cfg: PretrainConfig, method: str, out_path: str | Path) -> dict[str, Any]:
    """Run (or resume) the loop; write the checkpoint in the method's release layout when done."""
    paths = RunPaths.of(out_path)
    model = task.model
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=task.no_weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    # the fine-tuning schedule (linear warmup x half-period cosine), warming up from 0
    scheduler = build_scheduler(optimizer, cfg.steps, cfg.warmup_steps, warmup_factor=0.0)
    start, history = 0, []
    if cfg.resume:
        state = _load_state(paths, method, cfg)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, history = state["step"], [tuple(h) for h in state["history"]]
    elif task.prepare is not None:
        task.prepare()
    end = min(cfg.steps, cfg.stop_after) if cfg.stop_after is not None else cfg.steps
    params = [p for g in groups for p in g["params"]]

    def save_state(step: int) -> None:
        atomic_save(
            {
                "method": method,
                "step": step,
                "config": cfg.result_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
            },
            paths.state,
        )
        write_loss_log(paths.loss_log, history)

    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, desc=f"pretrain {method}", disable=not cfg.progress)
    for step in bar:
        torch.manual_seed(step_seed(cfg.seed, step))
        idx = batch_indices(len(task.dataset), cfg.batch_size, cfg.seed, step)
        batch = task.collate([task.dataset[i] for i in idx])
        loss = model(batch, progress=step / cfg.steps)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{method}: loss is {loss.item()} at step {step}; lower lr={cfg.lr}?")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        optimizer.step()
        history.append((step + 1, loss.item(), optimizer.param_groups[0]["lr"]))
        scheduler.step()
        bar.set_postfix(loss=f"{history[-1][1]:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            save_state(step + 1)
    elapsed = time.perf_counter() - t0
    done = end == cfg.steps

    summary: dict[str, Any] = {
        "method": method,
        "backbone": cfg.backbone,
        "encoder": cfg.encoder_kwargs(),
        "img_size": cfg.img_size,
        "steps": cfg.steps,
        "steps_done": end,
        "resumed_from": start,
        "complete": done,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "images": len(task.dataset),
        "loss_start": _mean([h[1] for h in history[:10]]),
        "loss_end": _mean([h[1] for h in history[-10:]]),
        "seconds": round(elapsed, 3),
        "steps_per_s": round((end - start) / elapsed, 4) if elapsed > 0 else None,
        "loss_log": str(paths.loss_log),
        **task.extra,
    }
    if done:
        atomic_save(task.release(end, optimizer), paths.checkpoint)
        summary["checkpoint"] = str(paths.checkpoint)
        if task.write_extras is not None:
            summary.update(task.write_extras(paths.checkpoint))
        paths.state.unlink(missing_ok=True)
    else:
        summary["resume_state"] = str(paths.state)
    write_loss_log(paths.loss_log, history)
    atomic_write_text(paths.summary, json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return summary


def _mean(xs: list[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def epochs_done(cfg: PretrainConfig, step: int, dataset_len: int) -> int:
    """Whole passes over the corpus after `step` steps (the `epoch` of MoCo v3's checkpoint)."""
    return math.ceil(step * cfg.batch_size / dataset_len)
