"""Distributed training helpers: process group from torchrun's environment, SyncBN, sharded batches.

One process per device. `torchrun` sets RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT); without
them the run is a single process and every helper here is a no-op. NCCL on GPUs, gloo on CPU.

References: torchvision references/detection/utils.py (init_distributed_mode, reduce_dict);
detectron2 layers/batch_norm.py (NaiveSyncBatchNorm).
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DistributedSampler, Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(kind: str, local_rank: int = 0) -> torch.device:
    """train.device: 'auto' (CUDA when available), 'cpu' or 'cuda' (the process's local GPU)."""
    if kind not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device = {kind!r}; allowed: auto, cpu, cuda")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device = 'cuda' but no CUDA device is available")
    if kind == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(
    device_kind: str = "auto", init_method: str | None = None, rank: int | None = None, world_size: int | None = None
) -> DistInfo:
    """Join the process group described by torchrun's environment (or by the arguments); else single process."""
    if dist.is_available() and dist.is_initialized():  # joined already (e.g. a test's file:// group)
        rank, world_size = dist.get_rank(), dist.get_world_size()
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = pick_device(device_kind, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            init_method=init_method or "env://",
            rank=rank,
            world_size=world_size,
            device_id=device if device.type == "cuda" else None,
        )
    return DistInfo(rank, world_size, local_rank, device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def reduce_mean(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each scalar averaged over processes (for logging; gradients are averaged by DDP itself)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    names = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in names])
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(names, stacked))


def broadcast_object(obj):
    """`obj` of rank 0 on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


OOM_KEY = "studylib/out_of_memory"
PEER_OOM_GRACE_S = 60.0  # how long a process told of a peer's OOM lets its main thread return before it exits


class OomSignal:
    """An out-of-memory error of one process, told to every process of the group out of band.

    A process that runs out of memory stops mid-step, while the others may wait in a collective it
    will never join (SyncBN's all-reduce in the forward, DDP's gradient buckets in the backward): a
    flag all-reduced at some fixed point would pair with one of those, or never be reached. So the
    failing process `publish`es the error in the process group's key-value store (torchrun's
    rendezvous store, not a collective). The others learn it in two ways: their pending collective
    fails when the failing process leaves the group (gloo), and the main thread then asks `peer()`;
    or (NCCL, where a collective waits on the GPU) a watcher thread polls the store and, if the main
    thread has not returned `PEER_OOM_GRACE_S` seconds after the news, ends the process with exit
    status 0: the run is recorded (metrics.json, by the failing process), so every process exits 0.
    Single process: no store, no thread; `peer()` is None.
    """

    def __init__(self, info: DistInfo, grace_s: float | None = None):
        self.rank, self.published = info.rank, False
        self.grace_s = PEER_OOM_GRACE_S if grace_s is None else grace_s
        self.store = dist.distributed_c10d._get_default_store() if info.distributed else None
        self.done = threading.Event()
        if self.store is not None:
            threading.Thread(target=self._watch, name="studylib-oom-watch", daemon=True).start()

    def publish(self, message: str) -> None:
        self.published = True
        if self.store is not None:
            self.store.set(OOM_KEY, f"rank {self.rank}: {message}")

    def peer(self) -> str | None:
        """The OOM another process published ('rank R: message'), or None."""
        if self.store is None or self.published or not self.store.check([OOM_KEY]):
            return None
        return self.store.get(OOM_KEY).decode()

    def close(self) -> None:
        self.done.set()

    def _watch(self) -> None:
        while not self.done.wait(1.0):
            news = self.peer()
            if news is not None:
                if not self.done.wait(self.grace_s):
                    print(
                        f"[train] rank {self.rank}: {news}; this process waits in a collective: exits", file=sys.stderr
                    )
                    sys.stderr.flush()
                    sys.stdout.flush()
                    os._exit(0)
                return


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over processes (the gradient of a sum is the summed gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class NaiveSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics are taken over all processes, each weighted by its pixel count.

    torch's `nn.SyncBatchNorm` has no CPU kernel, so gloo (CPU) runs use this differentiable
    all-reduce version (detectron2's NaiveSyncBatchNorm, stats_mode "N"); empty inputs still join the
    all-reduce (an RoI head may see no positive RoI on one process) so no process waits forever.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return super().forward(x)
        C = x.shape[1]
        n = torch.tensor([x.numel() / C], dtype=x.dtype, device=x.device)
        local = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), n])
        total = _AllReduceSum.apply(local)
        count = total[-1].clamp(min=1.0)
        mean, meansqr = total[:C] / count, total[C : 2 * C] / count
        var = (meansqr - mean * mean).clamp(min=0.0)
        with torch.no_grad():
            if self.track_running_stats:
                self.num_batches_tracked.add_(1)
                unbiased = var * count / (count - 1).clamp(min=1.0)
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(unbiased.detach(), self.momentum)
        scale = torch.rsqrt(var + self.eps)
        bias = -mean * scale
        if self.affine:
            scale, bias = scale * self.weight, bias * self.weight + self.bias
        return x * scale.view(1, C, 1, 1) + bias.view(1, C, 1, 1)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm synchronized across processes: `nn.SyncBatchNorm` on GPUs, `NaiveSyncBatchNorm` on CPU."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_naive(model)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """The trainer's data-parallel model: BatchNorm synchronized, then DistributedDataParallel on `device`."""
    model = convert_sync_batchnorm(model, device)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_gradients(model: nn.Module, sync: bool):
    """The context of one micro-batch's backward: DDP's `no_sync()` (gradients kept local) unless `sync`."""
    if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


def _convert_naive(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, NaiveSyncBatchNorm):
        out = NaiveSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:  # the same tensors (dtype, device, requires_grad), as nn.SyncBatchNorm's conversion
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_naive(child))
    return out


class ShardedBatchSampler(Sampler[list[int]]):
    """Per-process batches of one epoch: `DistributedSampler`'s shard, cut into full batches, from a position.

    The order depends only on (seed, epoch): a run resumed at (epoch, position) sees exactly the
    batches the uninterrupted run would have seen. Incomplete last batches are dropped, so every
    process runs the same number of iterations per epoch.
    """

    def __init__(
        self, num_images: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True
    ):
        if batch_size < 1:
            raise ValueError(f"per-process batch size {batch_size} must be >= 1")
        self.sampler = DistributedSampler(
            range(num_images), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self.batch_size = batch_size
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{num_images} training images over {world_size} process(es) give no full batch of "
                f"{batch_size} per process: lower train.batch_size or add images"
            )
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch `epoch`, skipping its first `start` batches (resume mid-epoch)."""
        self.sampler.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(self.sampler)
        for b in range(self.start, self.batches_per_epoch):
            yield indices[b * self.batch_size : (b + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start


def per_process_batch(global_batch: int, world_size: int) -> int:
    """train.batch_size is global; it must split evenly over processes."""
    if global_batch % world_size:
        raise ValueError(f"train.batch_size = {global_batch} does not split over {world_size} processes")
    return global_batch // world_size


@dataclass(frozen=True)
class BatchSplit:
    """How train.batch_size is reached: world_size processes x images_per_gpu images x accumulation micro-batches."""

    batch_size: int
    world_size: int
    images_per_gpu: int
    accumulation: int

    def describe(self, unit: str = "GPU") -> str:
        """The run's start-of-log line (BatchNorm / SyncBN statistics are per micro-batch)."""
        units = unit if self.world_size == 1 else {"process": "processes"}.get(unit, f"{unit}s")
        return (
            f"global batch {self.batch_size} = {self.world_size} {units} × {self.images_per_gpu} images × "
            f"{self.accumulation} accumulation steps; BN statistics over {self.world_size * self.images_per_gpu} "
            f"images per step"
        )


def batch_split(global_batch: int, world_size: int, images_per_gpu: int | None = None) -> BatchSplit:
    """train.batch_size over `world_size` processes of train.images_per_gpu images per forward (None: all of a
    process's share at once); the rest by gradient accumulation, which must divide exactly."""
    share = per_process_batch(global_batch, world_size)
    if images_per_gpu is None:
        return BatchSplit(global_batch, world_size, share, 1)
    if images_per_gpu < 1 or share % images_per_gpu:
        raise ValueError(
            f"train.batch_size = {global_batch} is not world_size {world_size} × train.images_per_gpu "
            f"{images_per_gpu} × a whole number of accumulation steps (each process's share is {share} images)"
        )
    return BatchSplit(global_batch, world_size, images_per_gpu, share // images_per_gpu)
