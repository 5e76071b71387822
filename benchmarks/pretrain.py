"""Benchmark: pre-train all four methods at the embedded default (vit_micro, 64², the study's steps).

Runs MAE, MoCo v3 and BEiT on the unlabeled pool and supervised on the train boxes of the synthetic
dataset, each with the settings the study uses (`study.pretrain` of params.yaml: steps, batch), and
writes per method: wall time, steps/s, loss start/end (means of the first/last 10 steps). Reference
measured in the same run: the same model's forward+backward on one fixed, pre-loaded batch (no data
pipeline, no optimizer), so the data/optimizer overhead is visible and numbers from a busy machine
can be judged. The machine's load average is recorded too.

    python benchmarks/pretrain.py [--data DIR] [--params params.yaml] [--out benchmarks/results/pretrain_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from studylib.config import read_params
from studylib.pretrain import METHODS, PretrainConfig, run
from studylib.pretrain.config import METHOD_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]


def dataset(data_dir: Path) -> Path:
    """The default synthetic dataset at `data_dir` (generated if absent)."""
    if not (data_dir / "annotations" / "instances_train.json").is_file():
        from studylib.data.synthetic import SyntheticConfig, generate

        generate(data_dir, SyntheticConfig())
    return data_dir


def compute_only(method: str, images: Path, ann: Path | None, cfg: PretrainConfig, reps: int = 5) -> float:
    """Seconds per forward+backward of the method's model on one fixed pre-loaded batch."""
    import importlib

    module = importlib.import_module(f"studylib.pretrain.{method}")
    rcfg = cfg.resolved(method, 1)
    torch.manual_seed(0)
    task = module.build(rcfg, images, ann)
    if task.prepare is not None:
        task.prepare()
    batch = task.collate([task.dataset[i % len(task.dataset)] for i in range(rcfg.batch_size)])
    task.model.train()
    task.model(batch, progress=0.5).backward()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        task.model(batch, progress=0.5).backward()
    return (time.perf_counter() - t0) / reps


def study_settings(params: Path) -> dict[str, dict]:
    """`study.pretrain` of the params file per method (its `all` entry merged under each method's own)."""
    p = read_params(params)["study"]["pretrain"]  # the study's own reader (YAML 1.2, as DVC)
    return {m: {**(p.get("all") or {}), **(p.get(m) or {})} for m in METHODS}


def device_name(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} torch thread(s)"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "studylib_bench_synthetic")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pretrain_cpu.json")
    p.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the study's settings (study.pretrain)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = study_settings(args.params)
    data = dataset(args.data)
    results: dict = {
        "device": device_name(args.threads),
        "backbone": "vit_micro",
        "img_size": 64,
        "data": str(data),
        "load_avg_start": os.getloadavg(),
        "methods": {},
    }
    work = Path(tempfile.mkdtemp(prefix="pretrain_bench_"))
    total = 0.0
    for method in args.methods:
        sup = method == "supervised"
        images = data / ("images/train" if sup else "unlabeled")
        ann = data / "annotations" / "instances_train.json" if sup else None
        cfg = PretrainConfig(**{**settings[method], "progress": False, "threads": args.threads})
        t0 = time.perf_counter()
        s = run(method, images, work / f"{method}.pth", cfg, ann_file=ann)
        wall = time.perf_counter() - t0
        total += wall
        ref = compute_only(method, images, ann, cfg)
        results["methods"][method] = {
            "steps": s["steps"],
            "batch_size": s["batch_size"],
            "images": s["images"],
            "wall_s": round(wall, 1),
            "loop_s": s["seconds"],
            "steps_per_s": s["steps_per_s"],
            "s_per_step": round(s["seconds"] / s["steps"], 3),
            "reference_compute_only_s_per_step": round(ref, 3),
            "loss_start": round(s["loss_start"], 4),
            "loss_end": round(s["loss_end"], 4),
            "lr": METHOD_DEFAULTS[method]["lr"],
            "load_avg_after": os.getloadavg()[0],
        }
        print(method, json.dumps(results["methods"][method]), flush=True)
    results["total_wall_s"] = round(total, 1)
    results["target_total_s"] = 15 * 60
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"total_wall_s": results["total_wall_s"], "out": str(args.out)}))
    return results


if __name__ == "__main__":
    main()
