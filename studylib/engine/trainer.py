"""One fine-tuning run of Mask R-CNN: the paper's recipe, one process or many (torchrun, DDP).

`train(cfg, out_dir, resume)` builds data and model from the config, trains for the scheduled
iterations (AdamW, warmup + half-period cosine, no gradient clipping, bf16 autocast on GPUs),
checkpoints atomically, evaluates on the val set and writes, in out_dir:

    config.yaml        the resolved config            load_report.json   what the initialization loaded
    history.csv        per-iteration losses and lr    dvclive/           the same for `dvc plots`
    checkpoints/last.pth   the resume point           model.pth          the final weights
    coco_results_{bbox,segm}.json, tide.json          metrics.json       flat keys, written last

Iteration i (1-based) is the i-th optimizer step; a checkpoint after i steps resumes at step i + 1
with the same data order, RNG states, optimizer and schedule.
"""
from __future__ import annotations

import csv
import io
import math
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import ExperimentConfig
from ..io import atomic_torch_save, atomic_write_json, atomic_write_text, exclusive_lock
from .build import base_dataset, build_datasets, build_model
from . import preempt
from .checkpoint import checkpoint_path, load_checkpoint, rng_state, save_checkpoint, unwrap
from .distributed import (DistInfo, ShardedBatchSampler, barrier, convert_sync_batchnorm, per_process_batch,
                          reduce_mean)
from .inference import autocast, evaluate
from .optim import build_optimizer, effective_lr
from .schedule import build_scheduler, num_iterations, warmup_iterations

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
HISTORY_FIELDS = ("iteration", "loss", *LOSS_KEYS, "lr")
WARMUP_ITERS_SKIPPED = 2  # iterations excluded from the steady-state iteration time


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_determinism(on: bool, device: torch.device) -> None:
    """train.deterministic: deterministic kernels (bitwise-reproducible CPU runs, e.g. the resume test)."""
    if on and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = not on


def peak_memory_gb(device: torch.device) -> float:
    """CUDA max allocated, or the process's peak resident set size on CPU (Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


class History:
    """DIR/history.csv (iteration, losses, lr) and dvclive's per-iteration plots, on rank 0 only."""

    def __init__(self, out_dir: Path, start: int, enabled: bool, resume: bool):
        self.enabled = enabled
        self.path = out_dir / "history.csv"
        self.live = None
        if not enabled:
            return
        rows = []
        if resume and self.path.is_file():  # drop rows past the checkpoint (and a half-written last line)
            text = self.path.read_text()
            complete = text if text.endswith("\n") else text[:text.rfind("\n") + 1]
            rows = [r for r in csv.DictReader(io.StringIO(complete))
                    if r.get("lr") not in (None, "") and int(r["iteration"]) <= start]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, HISTORY_FIELDS)
        from dvclive import Live

        self.live = Live(dir=str(out_dir / "dvclive"), resume=resume and start > 0, save_dvc_exp=False, dvcyaml=None)
        self.live.step = start

    def log(self, iteration: int, losses: dict[str, float], lr: float) -> None:
        if not self.enabled:
            return
        row = {"iteration": iteration, **{k: f"{v:.6g}" for k, v in losses.items() if k in HISTORY_FIELDS},
               "lr": f"{lr:.6g}"}
        self.writer.writerow(row)
        self.file.flush()
        for k, v in losses.items():
            self.live.log_metric(f"train/{k}", v)
        self.live.log_metric("train/lr", lr)

    def log_eval(self, metrics: dict[str, float]) -> None:
        if self.enabled:
            for k in ("bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50"):
                self.live.log_metric(f"val/{k}", metrics[k])

    def next_step(self) -> None:
        if self.enabled:
            self.live.next_step()

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.live.end()


def format_losses(losses: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in losses.items())


def check_finite(iteration: int, losses: dict[str, torch.Tensor]) -> None:
    """Stop the run on a NaN/inf loss, naming the iteration and every loss term."""
    values = {k: float(v) for k, v in losses.items()}
    if not all(math.isfinite(v) for v in values.values()):
        raise FloatingPointError(f"iteration {iteration}: non-finite loss: {format_losses(values)} "
                                 f"(the last good checkpoint is kept)")


def to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device):
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
               for t in targets]
    return images, targets


def train(cfg: ExperimentConfig, out_dir: str | Path, dist_info: DistInfo, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) the fine-tuning of `cfg` into `out_dir`; returns metrics.json's content (on every rank)."""
    out_dir = Path(out_dir)
    device, main = dist_info.device, dist_info.is_main
    tc = cfg.train
    if main:
        lock = exclusive_lock(out_dir / ".run.lock")  # one writer per output folder
        cfg.save(out_dir / "config.yaml")
        (out_dir / "metrics.json").unlink(missing_ok=True)  # metrics.json marks a complete run
    if tc.threads is not None and device.type == "cpu":
        torch.set_num_threads(tc.threads)  # oversubscribed cores cost far more than they give
    set_determinism(tc.deterministic, device)
    train_set, val_set = build_datasets(cfg, dist_info)
    seed_all(tc.seed)  # after the data: generating it or not must not change the model's initialization
    model = build_model(cfg, base_dataset(train_set).num_classes, out_dir if main else None).to(device)
    n_parameters = sum(p.numel() for p in model.parameters())
    if dist_info.distributed:
        model = convert_sync_batchnorm(model, device)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    global_batch = tc.batch_size
    sampler = ShardedBatchSampler(len(train_set), per_process_batch(global_batch, dist_info.world_size),
                                  dist_info.rank, dist_info.world_size, seed=tc.seed)
    total = num_iterations(tc.epochs, len(train_set), global_batch, tc.max_iters)
    warmup = warmup_iterations(tc.warmup_epochs, len(train_set), global_batch, total)
    lr = effective_lr(tc.lr, tc.lr_mult, global_batch, tc.base_batch_size)
    optimizer = build_optimizer(model, lr, tc.weight_decay, tc.betas, tc.layer_decay)
    scheduler = build_scheduler(optimizer, total, warmup)
    use_fp16 = device.type == "cuda" and tc.amp == "fp16"
    scaler = torch.amp.GradScaler("cuda") if use_fp16 else None

    start, train_time = 0, 0.0
    ckpt = checkpoint_path(out_dir)
    seed_all(tc.seed + dist_info.rank)  # each process its own augmentation / drop-path stream
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt, model, optimizer, scheduler, scaler, device, dist_info.rank,
                                dist_info.world_size)
        start, train_time = state["iteration"], state["extra"].get("train_time_s", 0.0)
        if not state["rng_restored"]:
            seed_all(tc.seed + dist_info.rank + 7919 * start)
            if main:
                print(f"[train] {ckpt} was written by {len(state['rng'])} process(es), this run has "
                      f"{dist_info.world_size}: RNG streams reseeded", file=sys.stderr)
        if main:
            print(f"[train] resumed from {ckpt} at iteration {start}/{total}", file=sys.stderr)
    elif resume and main:
        print(f"[train] --resume: no checkpoint at {ckpt}, starting from iteration 0", file=sys.stderr)

    history = History(out_dir, start, main, resume)
    log_every, tty = max(1, tc.log_every), sys.stderr.isatty()
    bar = tqdm(total=total, initial=start, disable=not (main and tty), dynamic_ncols=True, desc=cfg.name)
    if main:
        print(f"[train] {cfg.name}: {total} iterations ({len(train_set)} images, global batch {global_batch} on "
              f"{dist_info.world_size} process(es), {device.type}), lr {lr:.3g}, warmup {warmup}, "
              f"{n_parameters / 1e6:.2f}M parameters", file=sys.stderr)

    def save(iteration: int) -> None:
        rngs = [rng_state()]
        if dist_info.distributed:
            rngs = [None] * dist_info.world_size
            dist.all_gather_object(rngs, rng_state())
        if main:
            epoch, position = divmod(iteration, sampler.batches_per_epoch)
            save_checkpoint(ckpt, model, optimizer, scheduler, iteration, epoch, position, rngs, scaler,
                            extra={"train_time_s": train_time, "total": total})
        barrier()

    iteration, step_times = start, []
    model.train()
    try:
        while iteration < total:
            epoch, position = divmod(iteration, sampler.batches_per_epoch)
            sampler.set_epoch(epoch, position)
            # the loader's own generator: creating it mid-epoch on resume must not draw from the global RNG
            gen = torch.Generator().manual_seed(tc.seed + 1000 * epoch + dist_info.rank)
            loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=_collate, num_workers=cfg.data.workers,
                                pin_memory=device.type == "cuda", generator=gen)
            for images, targets in loader:
                t0 = time.perf_counter()
                images, targets = to_device(images, targets, device)
                lr_now = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["lr_scale"]
                with autocast(device, tc.amp):
                    loss_dict = model(images, targets)
                loss = sum(loss_dict.values())
                logged = reduce_mean({"loss": loss.detach(), **{k: v.detach() for k, v in loss_dict.items()}})
                check_finite(iteration + 1, logged)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                scheduler.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                dt = time.perf_counter() - t0
                train_time += dt
                iteration += 1
                if iteration - start > WARMUP_ITERS_SKIPPED:
                    step_times.append(dt)
                values = {k: float(v) for k, v in logged.items()}
                history.log(iteration, values, lr_now)
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr_now:.2e}", img_s=f"{global_batch / dt:.1f}")
                if main and not tty and (iteration % log_every == 0 or iteration == total):
                    eta = (total - iteration) * (sum(step_times) / len(step_times) if step_times else dt)
                    print(f"[train] iter {iteration}/{total} {format_losses(values)} lr {lr_now:.3g} "
                          f"{global_batch / dt:.1f} img/s eta {eta:.0f}s", file=sys.stderr, flush=True)
                stop = preempt.stop_requested()  # a scheduler's warning (launch/slurm.py): save now, requeue
                if stop or iteration % tc.checkpoint_every == 0 or iteration == total:
                    save(iteration)
                if stop:
                    raise preempt.Preempted(iteration)
                if tc.eval_every and iteration % tc.eval_every == 0 and iteration < total:
                    result = evaluate(model, val_set, device, tc.amp, cfg.eval.backend, dist_info=dist_info)
                    if result is not None:
                        history.log_eval(result["metrics"])
                if iteration >= total:
                    break  # the final evaluation is logged at this step
                history.next_step()
    finally:
        bar.close()

    result = evaluate(model, val_set, device, tc.amp, cfg.eval.backend, dist_info=dist_info)
    metrics: dict[str, Any] = {}
    if main:
        metrics = write_outputs(cfg, out_dir, model, result, history)
        metrics.update({
            "n_parameters": n_parameters, "seed": tc.seed, "train/iterations": total,
            "train/global_batch": global_batch, "train/world_size": dist_info.world_size, "train/lr_eff": lr,
            "train/time_s": train_time,
            "train/iter_time_s": float(np.mean(step_times)) if step_times else float("nan"),
            "train/peak_mem_gb": peak_memory_gb(device),
        })
        history.close()
        atomic_write_json(out_dir / "metrics.json", metrics)  # last: marks the run complete
        (out_dir / ".run.lock").unlink(missing_ok=True)
        lock.close()
    barrier()
    if dist_info.distributed:
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics


def _collate(batch: list) -> tuple:
    from ..data import collate_fn

    return collate_fn(batch)


def write_outputs(cfg: ExperimentConfig, out_dir: Path, model: torch.nn.Module, result: dict,
                  history: History) -> dict[str, Any]:
    """model.pth, COCO results, tide.json; returns the evaluation metrics (rank 0)."""
    from ..evaluation import save_results, tide_errors

    atomic_torch_save(out_dir / "model.pth", unwrap(model).state_dict())
    save_results(out_dir / "coco_results_bbox.json", result["bbox_results"])
    save_results(out_dir / "coco_results_segm.json", result["segm_results"])
    metrics = dict(result["metrics"])
    if cfg.eval.tide:
        atomic_write_json(out_dir / "tide.json", tide_errors(result["gt"], result["bbox_results"]))
    history.log_eval(metrics)
    history.next_step()
    return metrics
