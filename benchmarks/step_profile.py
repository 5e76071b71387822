"""Where a training step of the embedded detector spends its time: data, each module's forward, backward, optimizer.

    python benchmarks/step_profile.py [--steps 8] [--variant NAME=SECTION.KEY=VALUE[;...] ...]
                                      [--out benchmarks/results/step_profile_cpu.json]

The embedded study's `main` experiment (its config, its synthetic data: `dvc repro data` first, or it is
generated), one thread, batch as configured. Forward time per module comes from forward hooks on the
detector's top two levels; the whole step is timed around them. torch.profiler's top operators by self
CPU time are listed too. Each `--variant` (config overrides, e.g. `128px=data.img_size=128`) is profiled
in the same process after the study's own config, which is the reference: `variants[NAME]
["step_vs_reference"]` is its step time over the reference's. Not a pytest test.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from studylib import config  # noqa: E402
from studylib.data.coco import collate_fn  # noqa: E402
from studylib.engine.build import base_dataset, build_datasets, build_model  # noqa: E402
from studylib.engine.optim import build_optimizer  # noqa: E402
from studylib.io import atomic_write_json  # noqa: E402


def hook_times(model: torch.nn.Module, acc: dict[str, float]) -> None:
    """Add each top-two-level module's forward seconds to acc[name] (hooks stay on the model)."""

    def pre(m, args):
        m._t0 = time.perf_counter()

    def post(name):
        return lambda m, args, out: acc.__setitem__(name, acc[name] + time.perf_counter() - m._t0)

    for name, m in model.named_modules():
        if name and name.count(".") <= 1:
            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post(name))


def profile_step(params: str, sets: list[str], steps: int) -> dict:
    """One config's step: ms per step by phase and by module, and the top operators' self CPU shares."""
    cfg = config.load(params, "main", sets)
    torch.manual_seed(0)
    train, _ = build_datasets(cfg)
    model = build_model(cfg, base_dataset(train).num_classes).train()
    opt = build_optimizer(model, 1e-3, 0.1, (0.9, 0.999), None)
    bs = cfg.train.batch_size
    acc: dict[str, float] = collections.defaultdict(float)

    def step(i: int, timed: bool) -> None:
        t0 = time.perf_counter()
        images, targets = collate_fn([train[(i * bs + j) % len(train)] for j in range(bs)])
        t1 = time.perf_counter()
        loss = sum(model(list(images), list(targets)).values())
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if timed:
            for k, v in (("data", t1 - t0), ("forward", t2 - t1), ("backward", t3 - t2), ("optimizer", t4 - t3)):
                acc[f"step/{k}"] += v

    for i in range(2):
        step(i, False)
    hook_times(model, acc)
    acc.clear()
    for i in range(steps):
        step(i, True)
    per_step = {k: 1000 * v / steps for k, v in sorted(acc.items(), key=lambda kv: -kv[1])}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(3):
            step(i, False)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return {
        "sets": sets,
        "config": {
            "backbone": cfg.model.backbone,
            "img_size": cfg.data.img_size,
            "scale_range": list(cfg.data.scale_range),
            "batch": bs,
            "head_width": cfg.model.head_width,
            "rois_per_image": cfg.model.rois_per_image,
        },
        "step_ms": sum(v for k, v in per_step.items() if k.startswith("step/")),
        "ms_per_step": per_step,
        "forward_share": {k: v / per_step["step/forward"] for k, v in per_step.items() if not k.startswith("step/")},
        "top_ops_self_cpu_share": {e.key: e.self_cpu_time_total / total for e in ops},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=SECTION.KEY=VALUE[;...]")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/step_profile_cpu.json"))
    a = ap.parse_args()
    os.chdir(ROOT)
    torch.set_num_threads(1)
    reference = profile_step(a.params, [], a.steps)
    variants = {}
    for v in a.variant:
        name, _, sets = v.partition("=")
        if not name or not sets:
            raise SystemExit(f"--variant {v!r}: expected NAME=SECTION.KEY=VALUE[;SECTION.KEY=VALUE...]")
        variants[name] = profile_step(a.params, sets.split(";"), a.steps)
        variants[name]["step_vs_reference"] = variants[name]["step_ms"] / reference["step_ms"]
    result = {
        "benchmark": "step_profile",
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg(), "python": platform.python_version()},
        "torch": torch.__version__,
        "reference": reference,
        "variants": variants,
    }
    atomic_write_json(a.out, result)
    ratios = [f"{k} x{v['step_vs_reference']:.2f}" for k, v in variants.items()]
    print(f"{a.out}: {reference['step_ms']:.0f} ms per step", *ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
