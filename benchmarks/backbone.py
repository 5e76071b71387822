"""Backbone benchmark: forward+backward time and activation memory of `ViT` against timm's ViTDet/SAM ViT.

For each image size and attention strategy (window / hybrid / global / global + activation
checkpointing) it times one training step (forward + backward) of

- `ours`: `studylib.models.vit.ViT` with `use_rel_pos=False`,
- `ref`: `timm.models.vision_transformer_sam.VisionTransformerSAM` configured alike (same
  width/depth/heads/patch/window, the same global block indexes, abs pos on, rel pos off),
- `ours_rel`: ours with the shared relative position bias on (its cost; target <= +15%),

interleaving the runs so that load on the machine hits all of them alike. Memory: on CUDA the
peak of `torch.cuda.max_memory_allocated` above the weights (bf16 autocast); on CPU the bytes of
tensors saved for backward (activation memory, deterministic; parameters excluded). With
checkpointing only the block inputs are saved; the one-block recomputation peak is not counted.
Fused attention (flash / memory-efficient SDPA) never stores the N x N scores, so its memory is
linear in tokens for every strategy; the rows also measure memory with SDPA forced to the MATH
backend (unfused: softmax probabilities kept for backward), where global attention is quadratic.
The JSON holds per-row ratios to the reference and, per strategy, fitted exponents of memory and
time against the token count (memory ~ tokens^k) and the quadratic share of memory at the largest
size from a fit c + a*N + b*N^2.

    python benchmarks/backbone.py [--device cpu|cuda] [--sizes 128 256 ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from timm.models.vision_transformer_sam import VisionTransformerSAM
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from studylib.models.vit import ViT, default_global_blocks  # noqa: E402

# Model per device: a small ViT on CPU (a few minutes in all), ViT-B at the paper's sizes on CUDA.
MODELS = {
    "cpu": dict(embed_dim=192, depth=8, num_heads=3, patch_size=16, window_size=8, sizes=[128, 256, 320, 384, 512]),
    "cuda": dict(embed_dim=768, depth=12, num_heads=12, patch_size=16, window_size=14, sizes=[512, 768, 1024]),
}
STRATEGIES = ("window", "hybrid", "global", "global_ckpt")


def global_blocks_of(strategy: str, depth: int) -> tuple[int, ...]:
    if strategy == "window":
        return ()
    if strategy == "hybrid":
        return default_global_blocks(depth)
    return tuple(range(depth))


def build_ours(cfg: dict, size: int, strategy: str, rel_pos: bool) -> tuple[torch.nn.Module, Callable]:
    model = ViT(
        img_size=size,
        patch_size=cfg["patch_size"],
        embed_dim=cfg["embed_dim"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        window_size=cfg["window_size"],
        global_blocks=global_blocks_of(strategy, cfg["depth"]),
        use_abs_pos=True,
        use_rel_pos=rel_pos,
        pretrain_img_size=cfg["window_size"] * cfg["patch_size"],
        use_checkpoint=strategy == "global_ckpt",
    )
    return model, model.forward_features


def build_ref(cfg: dict, size: int, strategy: str) -> tuple[torch.nn.Module, Callable]:
    model = VisionTransformerSAM(
        img_size=size,
        patch_size=cfg["patch_size"],
        embed_dim=cfg["embed_dim"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        window_size=cfg["window_size"],
        global_attn_indexes=global_blocks_of(strategy, cfg["depth"]),
        use_abs_pos=True,
        use_rel_pos=False,
        num_classes=0,
        neck_chans=0,
        global_pool="",
    )
    model.set_grad_checkpointing(strategy == "global_ckpt")
    last = cfg["depth"] - 1

    def features(x: torch.Tensor) -> torch.Tensor:  # the raw last block, no neck/norm (as ViTDet uses it)
        return model.forward_intermediates(x, indices=[last], intermediates_only=True, norm=False)[0]

    return model, features


def train_step(model: torch.nn.Module, features: Callable, x: torch.Tensor, device: str) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        out = features(x)
    out.float().sum().backward()
    return out


def saved_activation_bytes(model: torch.nn.Module, features: Callable, x: torch.Tensor) -> int:
    """Bytes of distinct storages autograd saves for backward in one forward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:  # the graph keeps s alive, so its address is not reused meanwhile
            saved[s.data_ptr()] = s.nbytes()
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = features(x)
    out.sum().backward()
    return sum(saved.values())


def cuda_peak_bytes(model: torch.nn.Module, features: Callable, x: torch.Tensor) -> int:
    torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    train_step(model, features, x, "cuda")
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def time_step(model: torch.nn.Module, features: Callable, x: torch.Tensor, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    train_step(model, features, x, device)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def fit_exponent(tokens: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) on log(tokens)."""
    lx, ly = [math.log(t) for t in tokens], [math.log(v) for v in values]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def quadratic_share(tokens: list[int], values: list[float]) -> float:
    """Fit v = c + a*N + b*N^2 (least squares); the share b*N^2 / v at the largest N."""
    n = np.asarray(tokens, dtype=np.float64)
    (c, a, b), *_ = np.linalg.lstsq(np.stack([np.ones_like(n), n, n * n], 1), np.asarray(values, float), rcond=None)
    return float(b * n[-1] ** 2 / (c + a * n[-1] + b * n[-1] ** 2))


def bench_point(cfg: dict, size: int, strategy: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    impls = {
        "ours": build_ours(cfg, size, strategy, False),
        "ref": build_ref(cfg, size, strategy),
        "ours_rel": build_ours(cfg, size, strategy, True),
    }
    x = torch.randn(args.batch, 3, size, size, device=args.device)
    for model, _ in impls.values():
        model.to(args.device).train()
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, (m, _) in impls.items()}
    times: dict[str, list[float]] = {k: [] for k in impls}
    for m, f in impls.values():
        for _ in range(args.warmup):
            train_step(m, f, x, args.device)
    for _ in range(args.reps):  # interleaved, so that load changes affect every implementation
        for k, (m, f) in impls.items():
            times[k].append(time_step(m, f, x, args.device))
    measure = cuda_peak_bytes if args.device == "cuda" else saved_activation_bytes
    mem = {k: measure(m, f, x) for k, (m, f) in impls.items()}
    with sdpa_kernel(SDPBackend.MATH):  # unfused attention: what global attention stores without fused kernels
        mem.update({f"{k}_math": measure(*impls[k], x) for k in ("ours", "ref")})
    grid = size // cfg["patch_size"]
    row = dict(size=size, tokens=grid * grid, strategy=strategy, params=n_params)
    for k in impls:
        row[f"{k}_time_s"] = statistics.median(times[k])
    for k in mem:
        row[f"{k}_mem_bytes"] = mem[k]
    row["time_ratio_ours_vs_ref"] = row["ours_time_s"] / row["ref_time_s"]
    row["mem_ratio_ours_vs_ref"] = row["ours_mem_bytes"] / row["ref_mem_bytes"]
    row["time_ratio_rel_vs_ours"] = row["ours_rel_time_s"] / row["ours_time_s"]
    row["mem_ratio_rel_vs_ours"] = row["ours_rel_mem_bytes"] / row["ours_mem_bytes"]
    return row


def summarize(rows: list[dict]) -> dict:
    out = {}
    for s in STRATEGIES:
        rs = [r for r in rows if r["strategy"] == s]
        if len(rs) < 2:
            continue
        tok = [r["tokens"] for r in rs]
        out[s] = {
            f"{k}_{q}_exponent": fit_exponent(tok, [r[f"{k}_{q}"] for r in rs])
            for k in ("ours", "ref", "ours_rel")
            for q in ("mem_bytes", "time_s")
        }
        for k in ("ours", "ref", "ours_rel", "ours_math", "ref_math"):
            values = [r[f"{k}_mem_bytes"] for r in rs]
            out[s][f"{k}_mem_bytes_exponent"] = fit_exponent(tok, values)
            if len(rs) >= 3:
                out[s][f"{k}_mem_quadratic_share_at_max_tokens"] = quadratic_share(tok, values)
        for q in ("time_ratio_ours_vs_ref", "mem_ratio_ours_vs_ref", "time_ratio_rel_vs_ours", "mem_ratio_rel_vs_ours"):
            out[s][f"max_{q}"] = max(r[q] for r in rs)
            out[s][f"median_{q}"] = statistics.median(r[q] for r in rs)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--sizes", type=int, nargs="+", help="image sides (multiples of the patch size)")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared machine)")
    p.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/backbone_<device>.json)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; allowed here: cpu")
    torch.set_num_threads(args.threads)
    cfg = MODELS[args.device]
    sizes = args.sizes or cfg["sizes"]
    bad = [s for s in sizes if s % cfg["patch_size"]]
    if bad:
        raise ValueError(f"--sizes {bad} are not multiples of the patch size {cfg['patch_size']}")
    rows = []
    for size in sizes:
        for strategy in args.strategies:
            row = bench_point(cfg, size, strategy, args)
            rows.append(row)
            print(
                f"{size:5d} {strategy:12s} time ours/ref {row['time_ratio_ours_vs_ref']:.3f}  "
                f"mem ours/ref {row['mem_ratio_ours_vs_ref']:.3f}  rel/ours time {row['time_ratio_rel_vs_ours']:.3f} "
                f"mem {row['mem_ratio_rel_vs_ours']:.3f}  (ours {row['ours_time_s'] * 1e3:.1f} ms)",
                flush=True,
            )
    device_name = (
        torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    )
    result = dict(
        device=args.device,
        device_name=device_name,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        batch=args.batch,
        reps=args.reps,
        model={k: v for k, v in cfg.items() if k != "sizes"},
        memory_measure="cuda max_memory_allocated above weights, bf16 autocast"
        if args.device == "cuda"
        else "bytes of tensors saved for backward (activations; parameters excluded)",
        summary=summarize(rows),
        rows=rows,
    )
    out = args.out or Path(__file__).resolve().parent / "results" / f"backbone_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
