"""One fine-tuning run of Mask R-CNN: the paper's recipe, one process or many (torchrun, DDP).

`train(cfg, out_dir, resume)` builds data and model from the config, trains for the scheduled
iterations (AdamW, warmup + half-period cosine, no gradient clipping, bf16 autocast on GPUs),
checkpoints atomically, evaluates on the val set and writes, in out_dir:

    config.yaml        the resolved config            load_report.json   what the initialization loaded
    history.csv        per-iteration losses and lr    dvclive/           the same for `dvc plots`
    checkpoints/last.pth   the resume point           model.pth          the final weights
    coco_results_{bbox,segm}.json, tide.json          metrics.json       flat keys, written last

Where processes × train.images_per_gpu < train.batch_size, each step accumulates the gradients of
batch_size / (processes × images_per_gpu) micro-batches (distinct images of the step's batch), each loss
divided by their number: the step is that of the full batch whose loss is the mean of its micro-batches'
(as DDP's is the mean of its processes'); BatchNorm / SyncBN statistics are per micro-batch.
An out-of-memory error in a training iteration, on any process, is a result (Table 3): metrics.json
then holds `status: "oom"`, the images per GPU and the attention kernel, and every process returns
normally (`OomSignal` tells the other processes, which may be waiting in a collective).

Iteration i (1-based) is the i-th optimizer step; a checkpoint after i steps resumes at step i + 1
with the same data order, RNG states, optimizer and schedule.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from filelock import FileLock, Timeout
from timm.utils import unwrap_model
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import ExperimentConfig
from ..io import atomic_torch_save, atomic_write_json, atomic_write_text
from . import preempt
from .build import base_dataset, build_datasets, build_model, resolve_init
from .checkpoint import checkpoint_path, load_checkpoint, rng_state, save_checkpoint
from .distributed import (
    BatchSplit,
    DistInfo,
    OomSignal,
    ShardedBatchSampler,
    barrier,
    batch_split,
    broadcast_object,
    per_process_batch,
    reduce_mean,
    sync_gradients,
    wrap_ddp,
)
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


PEAK_MEM_MEANING = {
    "cuda": "CUDA max allocated over the training iterations (evaluations excluded)",
    "cpu": "peak resident set size of the process (ru_maxrss: cannot be reset, so it includes setup)",
}


def peak_memory_gb(device: torch.device) -> float:
    """CUDA max allocated since the last `reset_peak_memory`, or the process's peak resident set size on CPU
    (Linux reports KiB; the kernel keeps it from the process's start, no reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def attention_kernel(model: torch.nn.Module, device: torch.device, amp: str) -> str:
    """The scaled-dot-product-attention backend torch picks for the ViT's attention (SDPA, models/vit.py),
    without and with an additive mask (relative bias, window padding), at the run's device and dtype;
    'none' for a backbone without attention (ResNet)."""
    from torch.nn.attention import SDPBackend

    from ..models.vit import Attention

    attn = next((m for m in model.modules() if isinstance(m, Attention)), None)
    if attn is None:
        return "none"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if device.type == "cuda" else None  # autocast's
    dim = attn.qkv.in_features // attn.num_heads
    q = torch.zeros(1, attn.num_heads, 16, dim, device=device, dtype=dtype or torch.float32, requires_grad=True)
    mask = torch.zeros(1, attn.num_heads, 16, 16, device=device, dtype=q.dtype)
    plain, masked = (SDPBackend(torch._fused_sdp_choice(q, q, q, m)).name.lower() for m in (None, mask))
    kernel = plain if plain == masked else f"{plain}, masked: {masked}"
    return f"SDPA {kernel} ({device.type})"


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
            complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
            rows = [
                r
                for r in csv.DictReader(io.StringIO(complete))
                if r.get("lr") not in (None, "") and int(r["iteration"]) <= start
            ]
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
        row = {
            "iteration": iteration,
            **{k: f"{v:.6g}" for k, v in losses.items() if k in HISTORY_FIELDS},
            "lr": f"{lr:.6g}",
        }
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
        raise FloatingPointError(
            f"iteration {iteration}: non-finite loss: {format_losses(values)} (the last good checkpoint is kept)"
        )


def to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device):
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [
        {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
        for t in targets
    ]
    return images, targets


@dataclass
class Training:
    """What one run carries from step to step: data, model, optimizer, schedule, and where it writes."""

    cfg: ExperimentConfig
    out_dir: Path
    dist_info: DistInfo
    train_set: Any
    val_set: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    sampler: ShardedBatchSampler
    total: int
    warmup: int
    lr: float
    n_parameters: int
    split: BatchSplit
    iteration: int = 0
    peak_mem_gb: float = 0.0  # over the training iterations before the last periodic evaluation (CUDA)
    train_time: float = 0.0
    step_times: list[float] = field(default_factory=list)

    @property
    def ckpt(self) -> Path:
        return checkpoint_path(self.out_dir)


def train(cfg: ExperimentConfig, out_dir: str | Path, dist_info: DistInfo, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) the fine-tuning of `cfg` into `out_dir`; returns metrics.json's content (on every rank)."""
    out_dir = Path(out_dir)
    cfg = resolved(cfg, dist_info.world_size)
    lock = FileLock(out_dir / ".run.lock", timeout=0) if dist_info.is_main else None
    if lock is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire()  # one writer per output folder; the OS releases it when the process dies
        except Timeout:
            raise RuntimeError(f"{out_dir} is being written by another run (it holds .run.lock)") from None
        cfg.save(out_dir / "config.yaml")
        (out_dir / "metrics.json").unlink(missing_ok=True)  # metrics.json marks a complete run
    run = setup(cfg, out_dir, dist_info)
    start = restore(run) if resume else 0
    history = History(out_dir, start, dist_info.is_main, resume)
    oom = OomSignal(dist_info)
    try:
        train_loop(run, start, history)
    except torch.OutOfMemoryError as e:  # Table 3 reports it: a result, not a failure
        oom.publish(str(e).splitlines()[0] if str(e) else "out of memory")
        metrics = out_of_memory(run, str(e))
    except Exception:
        if oom.peer() is None:
            raise
        metrics = {"status": "oom"}  # the failing process wrote metrics.json
    else:
        metrics = finish(run, history)
    finally:
        oom.close()
    if metrics.get("status") == "oom":
        history.close()
        if lock is not None:
            (out_dir / ".run.lock").unlink(missing_ok=True)
            lock.release()
        return metrics  # no collective: a process may have left the group
    if lock is not None:
        (out_dir / ".run.lock").unlink(missing_ok=True)
        lock.release()
    barrier()
    return broadcast_object(metrics)


def resolved(cfg: ExperimentConfig, world_size: int) -> ExperimentConfig:
    """The config the run saves (config.yaml): the initialization as decided from its checkpoint file
    (`resolve_init`) and train.images_per_gpu as run on `world_size` processes."""
    cfg = copy.deepcopy(resolve_init(cfg))
    cfg.train.images_per_gpu = batch_split(cfg.train.batch_size, world_size, cfg.train.images_per_gpu).images_per_gpu
    return cfg


def setup(cfg: ExperimentConfig, out_dir: Path, dist_info: DistInfo) -> Training:
    """Data, model (DDP when distributed), optimizer and schedule of a run, seeded as the recipe says."""
    device, tc = dist_info.device, cfg.train
    if tc.threads is not None and device.type == "cpu":
        torch.set_num_threads(tc.threads)  # oversubscribed cores cost far more than they give
    set_determinism(tc.deterministic, device)
    train_set, val_set = build_datasets(cfg, dist_info)
    seed_all(tc.seed)  # after the data: generating it or not must not change the model's initialization
    model = build_model(cfg, base_dataset(train_set).num_classes, out_dir if dist_info.is_main else None).to(device)
    n_parameters = sum(p.numel() for p in model.parameters())
    if dist_info.distributed:
        model = wrap_ddp(model, device)
    split = batch_split(tc.batch_size, dist_info.world_size, tc.images_per_gpu)
    sampler = ShardedBatchSampler(  # a step's batch per process; train_step cuts it into micro-batches
        len(train_set),
        per_process_batch(tc.batch_size, dist_info.world_size),
        dist_info.rank,
        dist_info.world_size,
        seed=tc.seed,
    )
    total = num_iterations(tc.epochs, len(train_set), tc.batch_size, tc.max_iters)
    warmup = warmup_iterations(tc.warmup_epochs, len(train_set), tc.batch_size, total)
    lr = effective_lr(tc.lr, tc.lr_mult, tc.batch_size, tc.base_batch_size)
    optimizer = build_optimizer(model, lr, tc.weight_decay, tc.betas, tc.layer_decay)
    scheduler = build_scheduler(optimizer, total, warmup)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and tc.amp == "fp16" else None
    seed_all(tc.seed + dist_info.rank)  # each process its own augmentation / drop-path stream
    return Training(
        cfg,
        out_dir,
        dist_info,
        train_set,
        val_set,
        model,
        optimizer,
        scheduler,
        scaler,
        sampler,
        total,
        warmup,
        lr,
        n_parameters,
        split,
    )


def restore(run: Training) -> int:
    """Resume from the run's checkpoint, if there is one: the iteration it continues after (0 without one)."""
    dist_info, ckpt = run.dist_info, run.ckpt
    if not ckpt.is_file():
        if dist_info.is_main:
            print(f"[train] --resume: no checkpoint at {ckpt}, starting from iteration 0", file=sys.stderr)
        return 0
    state = load_checkpoint(
        ckpt,
        run.model,
        run.optimizer,
        run.scheduler,
        run.scaler,
        dist_info.device,
        dist_info.rank,
        dist_info.world_size,
    )
    start, run.train_time = state["iteration"], state["extra"].get("train_time_s", 0.0)
    if not state["rng_restored"]:
        seed_all(run.cfg.train.seed + dist_info.rank + 7919 * start)
        if dist_info.is_main:
            print(
                f"[train] {ckpt} was written by {len(state['rng'])} process(es), this run has "
                f"{dist_info.world_size}: RNG streams reseeded",
                file=sys.stderr,
            )
    if dist_info.is_main:
        print(f"[train] resumed from {ckpt} at iteration {start}/{run.total}", file=sys.stderr)
    return start


def save(run: Training, iteration: int) -> None:
    """An atomic checkpoint after `iteration` steps, with every process's RNG states (written by rank 0)."""
    rngs = [rng_state()]
    if run.dist_info.distributed:
        rngs = [None] * run.dist_info.world_size
        dist.all_gather_object(rngs, rng_state())
    if run.dist_info.is_main:
        epoch, position = divmod(iteration, run.sampler.batches_per_epoch)
        save_checkpoint(
            run.ckpt,
            run.model,
            run.optimizer,
            run.scheduler,
            iteration,
            epoch,
            position,
            rngs,
            run.scaler,
            extra={"train_time_s": run.train_time, "total": run.total},
        )
    barrier()


def train_step(
    run: Training, images: list[torch.Tensor], targets: list[dict], iteration: int
) -> tuple[dict[str, float], float]:
    """One optimizer step (iteration is its 1-based number) over the step's batch, in `run.split.accumulation`
    micro-batches: the losses averaged over micro-batches and processes, and its lr."""
    device, amp, steps = run.dist_info.device, run.cfg.train.amp, run.split.accumulation
    group = run.optimizer.param_groups[0]
    lr_now = group["lr"] / group["lr_scale"]
    run.optimizer.zero_grad(set_to_none=True)
    n, totals = len(images) // steps, {}
    for j in range(steps):
        micro = to_device(images[j * n : (j + 1) * n], targets[j * n : (j + 1) * n], device)
        with sync_gradients(run.model, sync=j == steps - 1):  # DDP all-reduces at the last micro-batch only
            with autocast(device, amp):
                loss_dict = run.model(*micro)
            loss = sum(loss_dict.values()) / steps
            (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
        for k, v in {"loss": loss.detach() * steps, **loss_dict}.items():
            totals[k] = totals.get(k, 0.0) + v.detach() / steps
    logged = reduce_mean(totals)
    check_finite(iteration, logged)  # before the optimizer step: the parameters stay finite
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {k: float(v) for k, v in logged.items()}, lr_now


def train_loop(run: Training, start: int, history: History) -> None:
    """Iterations start+1 .. total: steps, logs, checkpoints, periodic evaluations."""
    cfg, dist_info, tc = run.cfg, run.dist_info, run.cfg.train
    device, main, global_batch = dist_info.device, dist_info.is_main, tc.batch_size
    log_every, tty = max(1, tc.log_every), sys.stderr.isatty()
    bar = tqdm(total=run.total, initial=start, disable=not (main and tty), dynamic_ncols=True, desc=cfg.name)
    if main:
        print(
            f"[train] {cfg.name}: {run.total} iterations ({len(run.train_set)} images, global batch {global_batch} "
            f"on {dist_info.world_size} process(es), {device.type}), lr {run.lr:.3g}, warmup {run.warmup}, "
            f"{run.n_parameters / 1e6:.2f}M parameters",
            file=sys.stderr,
        )
        print(f"[train] {run.split.describe('GPU' if device.type == 'cuda' else 'process')}", file=sys.stderr)
    iteration = run.iteration = start
    run.model.train()
    reset_peak_memory(device)  # the training peak: iterations only, not setup or evaluation
    try:
        while iteration < run.total:
            epoch, position = divmod(iteration, run.sampler.batches_per_epoch)
            run.sampler.set_epoch(epoch, position)
            # the loader's own generator: creating it mid-epoch on resume must not draw from the global RNG
            gen = torch.Generator().manual_seed(tc.seed + 1000 * epoch + dist_info.rank)
            loader = DataLoader(
                run.train_set,
                batch_sampler=run.sampler,
                collate_fn=_collate,
                num_workers=cfg.data.workers,
                pin_memory=device.type == "cuda",
                generator=gen,
            )
            for images, targets in loader:
                t0 = time.perf_counter()
                values, lr_now = train_step(run, images, targets, iteration + 1)
                dt = time.perf_counter() - t0
                run.train_time += dt
                iteration = run.iteration = iteration + 1
                if iteration - start > WARMUP_ITERS_SKIPPED:
                    run.step_times.append(dt)
                history.log(iteration, values, lr_now)
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{lr_now:.2e}", img_s=f"{global_batch / dt:.1f}")
                if main and not tty and (iteration % log_every == 0 or iteration == run.total):
                    eta = (run.total - iteration) * (
                        sum(run.step_times) / len(run.step_times) if run.step_times else dt
                    )
                    print(
                        f"[train] iter {iteration}/{run.total} {format_losses(values)} lr {lr_now:.3g} "
                        f"{global_batch / dt:.1f} img/s eta {eta:.0f}s",
                        file=sys.stderr,
                        flush=True,
                    )
                stop = preempt.stop_requested()  # a scheduler's warning (launch/slurm.py): save now, requeue
                if stop or iteration % tc.checkpoint_every == 0 or iteration == run.total:
                    save(run, iteration)
                if stop:
                    raise preempt.Preempted(iteration)
                if tc.eval_every and iteration % tc.eval_every == 0 and iteration < run.total:
                    run.peak_mem_gb = max(run.peak_mem_gb, peak_memory_gb(device))
                    result = evaluate(run.model, run.val_set, device, tc.amp, cfg.eval.backend, dist_info=dist_info)
                    if result is not None:
                        history.log_eval(result["metrics"])
                    reset_peak_memory(device)
                if iteration >= run.total:
                    break  # the final evaluation is logged at this step
                history.next_step()
    finally:
        bar.close()


def finish(run: Training, history: History) -> dict[str, Any]:
    """The final evaluation; on rank 0 the run's outputs and metrics.json (written last), returned."""
    tc, dist_info = run.cfg.train, run.dist_info
    peak_mem = max(run.peak_mem_gb, peak_memory_gb(dist_info.device))  # before the final evaluation
    result = evaluate(run.model, run.val_set, dist_info.device, tc.amp, run.cfg.eval.backend, dist_info=dist_info)
    if not dist_info.is_main:
        return {}
    metrics = write_outputs(run.cfg, run.out_dir, run.model, result, history)
    metrics.update(
        {
            "n_parameters": run.n_parameters,
            "seed": tc.seed,
            "train/iterations": run.total,
            "train/global_batch": tc.batch_size,
            "train/world_size": dist_info.world_size,
            "train/images_per_gpu": run.split.images_per_gpu,
            "train/accumulation_steps": run.split.accumulation,
            "train/lr_eff": run.lr,
            "train/time_s": run.train_time,
            "train/iter_time_s": float(np.mean(run.step_times)) if run.step_times else float("nan"),
            "train/peak_mem_gb": peak_mem,
            **run_facts(run),
        }
    )
    history.close()
    atomic_write_json(run.out_dir / "metrics.json", metrics)  # last: marks the run complete
    return metrics


def run_facts(run: Training) -> dict[str, Any]:
    """What Table 3 shows beside its numbers: images per GPU (per process), attention and its kernel."""
    m, device = run.cfg.model, run.dist_info.device
    return {
        "train/images_per_gpu": run.split.images_per_gpu,  # per forward (gradient accumulation: per micro-batch)
        "train/attention": m.attention,
        "train/use_checkpoint": m.use_checkpoint,
        "train/attention_kernel": attention_kernel(run.model, device, run.cfg.train.amp),
        "train/peak_mem_meaning": PEAK_MEM_MEANING[device.type],
    }


def out_of_memory(run: Training, error: str) -> dict[str, Any]:
    """metrics.json of a run that ran out of memory at `run.iteration + 1`, written by the failing process."""
    if run.dist_info.device.type == "cuda":
        run.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
    metrics = {
        "status": "oom",
        "error": error.splitlines()[0] if error else "out of memory",
        "rank": run.dist_info.rank,
        "iteration": run.iteration + 1,
        "seed": run.cfg.train.seed,
        "train/world_size": run.dist_info.world_size,
        "train/global_batch": run.cfg.train.batch_size,
        **run_facts(run),
    }
    print(f"[train] rank {metrics['rank']}: out of memory at iteration {metrics['iteration']}", file=sys.stderr)
    atomic_write_json(run.out_dir / "metrics.json", metrics)
    return metrics


def _collate(batch: list) -> tuple:
    from ..data import collate_fn

    return collate_fn(batch)


def write_outputs(
    cfg: ExperimentConfig, out_dir: Path, model: torch.nn.Module, result: dict, history: History
) -> dict[str, Any]:
    """model.pth, COCO results, tide.json; returns the evaluation metrics (rank 0)."""
    from ..evaluation import save_results, tide_errors

    atomic_torch_save(out_dir / "model.pth", unwrap_model(model).state_dict())
    save_results(out_dir / "coco_results_bbox.json", result["bbox_results"])
    save_results(out_dir / "coco_results_segm.json", result["segm_results"])
    metrics = dict(result["metrics"])
    if cfg.eval.tide:
        atomic_write_json(out_dir / "tide.json", tide_errors(result["gt"], result["bbox_results"]))
    history.log_eval(metrics)
    history.next_step()
    return metrics
