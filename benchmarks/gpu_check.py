"""The prepared GPU check: the paper scale's cost and the CUDA paths, measured in one short run.

    bash benchmarks/gpu_check.sh [OUT_DIR]                 # one GPU: <= 8 min, stops itself before 9
    bash benchmarks/gpu_check.sh --cpu-dry-run [OUT_DIR]   # the same code paths at a tiny size on CPU

Steps, in order of value (each writes OUT/gpu_check.json again, atomically, so a run stopped by its
time budget or killed keeps what it measured so far):

1. `environment`: device, memory, torch / torchvision / timm / CUDA / cuDNN / NCCL versions.
2. `correctness`: 30 iterations of ViT-B Mask R-CNN training on one synthetic 1024² batch, bf16
   autocast, the paper's optimizer and warmup: every loss finite, the loss falling.
3. `ddp`: a one-process NCCL group (gloo on CPU) comes up and the trainer's DDP wrapper trains a step.
4. `table3`: ViT-B, ResNet-101 FPN, then ViT-L at 1024², bf16, the paper's heads, 1 and 2 images per GPU;
   for the ViTs window-only / hybrid / global + checkpointing / global attention. Peak memory over the
   training iterations only (`max_memory_allocated`, reset after the model is built), median time per
   iteration after warm-up, per-image inference time (batch 1); out-of-memory recorded as `oom`.
5. `table5`: inference fps at batch 1 for ViT-B, ViT-L and ResNet-101 (random weights: the counts of
   a trained model differ through its number of detections).
6. `benchmarks/backbone.py` and `benchmarks/train_step.py` on the device, as subprocesses.

Ratios beside the published ones: hybrid vs window (memory and time) and global + checkpointing vs
window, against ViTDet's Table 3 (`studylib/report/published.yaml`, `cost_ratios`).
Needs at import time only torch, torchvision, timm, numpy and pyyaml, plus ruamel.yaml for params.yaml
(carried as a wheel to a machine without it: benchmarks/gpu_wheels.sh).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the checkout (not installed) and train_step.py
from train_step import synthetic_batch  # noqa: E402  (benchmarks/train_step.py: one synthetic batch maker)

from studylib import config  # noqa: E402
from studylib.complexity import images_per_second  # noqa: E402
from studylib.engine.build import build_model  # noqa: E402
from studylib.engine.distributed import NaiveSyncBatchNorm, wrap_ddp  # noqa: E402
from studylib.engine.inference import autocast  # noqa: E402
from studylib.engine.optim import build_optimizer  # noqa: E402
from studylib.engine.schedule import build_scheduler  # noqa: E402
from studylib.io import atomic_write_text  # noqa: E402

NUM_CLASSES = 80  # COCO
ATTENTION = {
    "window": ["model.attention=window"],
    "hybrid": ["model.attention=hybrid"],
    "global_ckpt": ["model.attention=global", "model.use_checkpoint=true"],
    "global": ["model.attention=global"],
}
# Per mode: image side, iterations, and the diff that makes each model tiny on CPU (same code paths).
MODES = {
    "gpu": dict(img_size=1024, warmup=3, iters=5, infer_warmup=2, infer_iters=5, fps_images=10, steps=30, tiny=[]),
    "dry": dict(
        img_size=128,
        warmup=1,
        iters=2,
        infer_warmup=1,
        infer_iters=1,
        fps_images=2,
        steps=30,
        tiny=["model.head_width=32", "model.fc_dim=64", "model.rois_per_image=32", "model.window_size=4"],
    ),
}
TINY_VIT = {
    "vit_base": "model.overrides={embed_dim: 64, depth: 4, num_heads: 2}",
    "vit_large": "model.overrides={embed_dim: 96, depth: 8, num_heads: 3}",
}
# experiment in params.yaml -> backbone it runs (Table 1's sizes and Table 5's CNN reference)
MODELS = {"vit_base": "main", "vit_large": "vit_large", "resnet101": "cx_resnet101"}


def experiment_config(backbone: str, mode: str, extra: list[str] = ()) -> config.ExperimentConfig:
    """The paper scale's config of `backbone` (params.yaml, scale: paper), made tiny in the dry run."""
    params = dict(config.read_params(ROOT / "params.yaml"), scale="paper")
    sets = [f"data.img_size={MODES[mode]['img_size']}", *MODES[mode]["tiny"], *extra]
    if mode == "dry" and backbone in TINY_VIT:
        sets.append(TINY_VIT[backbone])
    if mode == "dry" and backbone == "resnet101":
        sets = [s for s in sets if not s.startswith("model.window_size")]
    return config.load(params, MODELS[backbone], sets)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def train_iterations(
    model, images, targets, device, amp: str, n: int, lr: float, weight_decay: float, warmup: int = 0
) -> tuple[list[float], list[float]]:
    """`n` training iterations on one batch -> (losses, seconds per iteration)."""
    optimizer = build_optimizer(model, lr, weight_decay)
    scheduler = build_scheduler(optimizer, n, warmup)
    model.train()
    losses, seconds = [], []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, amp):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        sync(device)
        seconds.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return losses, seconds


def amp_on(cfg: config.ExperimentConfig, device: torch.device) -> str:
    """The precision a step really runs in (`autocast` leaves CPU in fp32)."""
    return cfg.train.amp if device.type == "cuda" else "none"


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def table3_row(backbone: str, attention: str | None, per_gpu: int, mode: str, device: torch.device) -> dict:
    """One row of Table 3: peak training memory, time per iteration, inference time per image."""
    m = MODES[mode]
    cfg = experiment_config(backbone, mode, ATTENTION[attention] if attention else [])
    row = {
        "backbone": backbone,
        "attention": attention,
        "use_checkpoint": cfg.model.use_checkpoint,
        "images_per_gpu": per_gpu,
        "img_size": cfg.data.img_size,
        "amp": amp_on(cfg, device),
    }
    try:
        torch.manual_seed(0)
        model = build_model(cfg, NUM_CLASSES).to(device)
        images, targets = synthetic_batch(per_gpu, cfg.data.img_size, NUM_CLASSES, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # training iterations only, from here
        losses, seconds = train_iterations(
            model,
            images,
            targets,
            device,
            cfg.train.amp,
            m["warmup"] + m["iters"],
            cfg.train.lr,
            cfg.train.weight_decay,
        )
        row.update(
            status="ok",
            train_peak_mem_gb=peak_gb(device),
            train_s_per_iter=statistics.median(seconds[m["warmup"] :]),
            losses_finite=all(map(_finite, losses)),
        )
        if per_gpu == 1:
            row["infer_s_per_image"] = 1 / fps(
                model, images[0], device, cfg.train.amp, m["infer_warmup"], m["infer_iters"]
            )
    except torch.cuda.OutOfMemoryError as e:
        row.update(status="oom", error=str(e).splitlines()[0])
    finally:
        model = images = targets = None
        free(device)
    return row


def fps(model, image: torch.Tensor, device: torch.device, amp: str, warmup: int, n: int) -> float:
    """Table 5's fps: one image per forward, `n` timed after `warmup`, under the training's autocast."""
    with autocast(device, amp):
        return images_per_second(model, [image] * n, device, warmup=warmup)


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def correctness(mode: str, device: torch.device) -> dict:
    """ViT-B trained for `steps` iterations on one synthetic batch under bf16: finite and falling loss."""
    m = MODES[mode]
    cfg = experiment_config("vit_base", mode)
    torch.manual_seed(0)
    model = build_model(cfg, NUM_CLASSES).to(device)
    images, targets = synthetic_batch(2, cfg.data.img_size, NUM_CLASSES, device)
    losses, seconds = train_iterations(
        model, images, targets, device, cfg.train.amp, m["steps"], cfg.train.lr, cfg.train.weight_decay, warmup=5
    )
    first, last = statistics.fmean(losses[:5]), statistics.fmean(losses[-5:])
    free(device)
    return {
        "backbone": "vit_base",
        "img_size": cfg.data.img_size,
        "amp": amp_on(cfg, device),
        "iterations": len(losses),
        "losses": losses,
        "finite": all(map(_finite, losses)),
        "first5_mean": first,
        "last5_mean": last,
        "falling": last < first,
        "s_per_iter": statistics.median(seconds[5:]),
        "ok": all(map(_finite, losses)) and last < first,
    }


def ddp_step(mode: str, device: torch.device) -> dict:
    """A one-process group (NCCL on CUDA, gloo on CPU) and one step of the trainer's DDP wrapper."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=0,
        world_size=1,
        device_id=device if device.type == "cuda" else None,
    )
    try:
        cfg = experiment_config("vit_base", mode)
        model = wrap_ddp(build_model(cfg, NUM_CLASSES).to(device), device)
        images, targets = synthetic_batch(1, cfg.data.img_size, NUM_CLASSES, device)
        losses, _ = train_iterations(
            model, images, targets, device, cfg.train.amp, 1, cfg.train.lr, cfg.train.weight_decay
        )
        probe = torch.ones(1, device=device)
        dist.all_reduce(probe)
        return {
            "backend": dist.get_backend(),
            "world_size": dist.get_world_size(),
            "wrapper": type(model).__name__,
            "sync_batchnorm_layers": sum(
                isinstance(x, (torch.nn.SyncBatchNorm, NaiveSyncBatchNorm)) for x in model.modules()
            ),
            "loss": losses[0],
            "all_reduce": float(probe),
            "ok": _finite(losses[0]) and float(probe) == 1.0,
        }
    finally:
        dist.destroy_process_group()
        free(device)


def environment(device: torch.device) -> dict:
    import timm
    import torchvision

    env = {
        "device_type": device.type,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "host": platform.node(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device=props.name,
            memory_gb=props.total_memory / 2**30,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            nccl=_version(torch.cuda.nccl.version()),
            sdpa={
                "flash": torch.backends.cuda.flash_sdp_enabled(),
                "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                "math": torch.backends.cuda.math_sdp_enabled(),
            },
        )
    else:
        env["device"] = f"CPU {platform.processor() or platform.machine()} (dry run)"
    return env


def _version(v) -> str:
    return ".".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)


def table5_row(backbone: str, mode: str, device: torch.device) -> dict:
    m = MODES[mode]
    cfg = experiment_config(backbone, mode)
    torch.manual_seed(0)
    model = build_model(cfg, NUM_CLASSES).to(device)
    size = cfg.data.img_size
    image = torch.rand(3, size * 3 // 4, size, generator=torch.Generator().manual_seed(0)).to(device)  # 4:3, as COCO
    value = fps(model, image, device, cfg.train.amp, m["infer_warmup"], m["fps_images"])
    free(device)
    return {
        "backbone": backbone,
        "input": list(image.shape[1:]),
        "batch": 1,
        "amp": amp_on(cfg, device),
        "fps": value,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "weights": "random",
    }


def ratios(rows: list[dict]) -> dict:
    """Our cost ratios to window-only attention (ViT-L, else ViT-B; one image per GPU), as ViTDet's Table 3."""
    out = {}
    for backbone in ("vit_large", "vit_base"):
        by = {
            r["attention"]: r
            for r in rows
            if r["backbone"] == backbone and r["images_per_gpu"] == 1 and r.get("status") == "ok"
        }
        if "window" not in by:
            continue
        base = by["window"]
        for name in ("hybrid", "global_ckpt", "global"):
            if name in by:
                r = by[name]
                out[f"{backbone}/{name}_vs_window"] = {
                    k: r[k] / base[k]
                    for k in ("train_peak_mem_gb", "train_s_per_iter", "infer_s_per_image")
                    if r.get(k) is not None and base.get(k)
                }
    return out


def published_ratios() -> dict:
    published = yaml.safe_load((ROOT / "studylib" / "report" / "published.yaml").read_text())
    return {"values": published["cost_ratios"], "source": published["source"]["cost_ratios"]}


# -- the run: steps in order of value, each under the time budget --------------------------------------------
# (estimated seconds on one GPU; a step that would end past the budget is recorded as skipped)
TABLE3 = (
    [("vit_base", a, n) for n in (1, 2) for a in ATTENTION]
    + [("resnet101", None, n) for n in (1, 2)]
    + [("vit_large", a, n) for n in (1, 2) for a in ATTENTION]
)
ESTIMATE_S = {"vit_base": 15, "resnet101": 15, "vit_large": 30}


def sub_benchmark(script: str, args: list[str], out: Path, timeout: float) -> dict:
    """benchmarks/<script> as a subprocess writing `out`; its summary, or how it ended."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *args, "--out", str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout_s": timeout, "command": cmd}
    if proc.returncode != 0:
        return {"status": "failed", "returncode": proc.returncode, "stderr_tail": proc.stderr[-2000:], "command": cmd}
    result = json.loads(out.read_text())
    return {"status": "ok", "file": out.name, "summary": result.get("summary", result.get("results"))}


class Check:
    """The JSON being written: each step's result lands in it, and the file is rewritten after each."""

    def __init__(self, out_dir: Path, mode: str, budget_s: float):
        self.path, self.t0, self.budget_s = out_dir / "gpu_check.json", time.monotonic(), budget_s
        self.data: dict = {
            "check": "benchmarks/gpu_check.sh",
            "mode": mode,
            "budget_s": budget_s,
            "finished": False,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "skipped": [],
            "errors": [],
        }

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def save(self) -> None:
        self.data["elapsed_s"] = time.monotonic() - self.t0
        atomic_write_text(self.path, json.dumps(self.data, indent=1) + "\n")

    def step(self, name: str, estimate_s: float, fn, *args):
        """Run fn(*args) if it fits the budget; a failure is recorded (and the check goes on)."""
        if self.left() < estimate_s:
            self.data["skipped"].append(f"{name} (time budget: {self.left():.0f} s left, needs ~{estimate_s} s)")
            self.save()
            return None
        print(f"[gpu_check] {name} ({self.left():.0f} s left)", flush=True)
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - a failed step is a result of the check, recorded with its cause
            self.data["errors"].append(f"{name}: {type(e).__name__}: {e}")
            return None
        finally:
            self.save()


def run(mode: str, out_dir: Path, budget_s: float) -> dict:
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    if mode == "gpu" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device is available (use --cpu-dry-run to exercise the code on CPU)")
    scale = 1 if mode == "gpu" else 0.2
    if mode == "dry":
        torch.set_num_threads(1)  # steadiest on a shared CPU (oversubscribed threads slow everything down)
    out_dir.mkdir(parents=True, exist_ok=True)
    check = Check(out_dir, mode, budget_s)
    d = check.data
    d["environment"] = environment(device)
    d["published_ratios"] = published_ratios()
    d["correctness"] = check.step("correctness: ViT-B 30 iterations", 40 * scale, correctness, mode, device)
    d["ddp"] = check.step("ddp: 1-process group + DDP step", 20 * scale, ddp_step, mode, device)
    d["table3"], d["table5"] = [], []
    for i, (backbone, attention, per_gpu) in enumerate(TABLE3):
        if i == 10:  # after ViT-B and ResNet-101: Table 5 before the ViT-L rows
            for b in MODELS:
                row = check.step(f"table5: {b} fps", ESTIMATE_S[b] * scale, table5_row, b, mode, device)
                d["table5"] += [row] if row else []
        row = check.step(
            f"table3: {backbone} {attention or ''} x{per_gpu}",
            ESTIMATE_S[backbone] * scale,
            table3_row,
            backbone,
            attention,
            per_gpu,
            mode,
            device,
        )
        d["table3"] += [row] if row else []
        d["ratios_ours"] = ratios(d["table3"])
    bench_args = {
        "gpu": (["--device", "cuda", "--sizes", "512", "1024"], ["--device", "cuda"]),
        "dry": (
            ["--device", "cpu", "--sizes", "64", "128", "--reps", "1", "--warmup", "0"],
            ["--device", "cpu", "--iters", "1", "--warmup", "0", "--threads", "1"],
        ),
    }[mode]
    d["benchmarks"] = {}
    for (name, script), args in zip((("backbone", "backbone.py"), ("train_step", "train_step.py")), bench_args):
        out = out_dir / f"{name}_{device.type}.json"
        d["benchmarks"][name] = check.step(
            f"benchmark: {script}", 30 * scale, lambda s=script, a=args, o=out: sub_benchmark(s, a, o, check.left() - 5)
        )
    d["finished"] = True
    d["ok"] = bool(d["correctness"] and d["correctness"]["ok"] and d["ddp"] and d["ddp"]["ok"]) and not d["errors"]
    check.save()
    return d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-dry-run", action="store_true", help="every step at a tiny size on CPU")
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--budget-s", type=float, default=None, help="steps that would end later are skipped")
    args = p.parse_args(argv)
    mode = "dry" if args.cpu_dry_run else "gpu"
    out_dir = args.out_dir or ROOT / "benchmarks" / "results" / ("gpu_check" if mode == "gpu" else "tmp/gpu_check_dry")
    budget = args.budget_s if args.budget_s is not None else (450.0 if mode == "gpu" else 300.0)
    d = run(mode, out_dir, budget)
    print(
        f"[gpu_check] {d['environment']['device']}: ok={d['ok']} in {d['elapsed_s']:.0f} s; "
        f"{len(d['table3'])} Table 3 rows, {len(d['skipped'])} skipped, {len(d['errors'])} errors -> "
        f"{out_dir / 'gpu_check.json'}",
        flush=True,
    )
    for e in d["errors"]:
        print(f"[gpu_check] error: {e}", file=sys.stderr)
    return 0 if d["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
