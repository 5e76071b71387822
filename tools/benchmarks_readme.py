"""Write the "Last results" section of benchmarks/README.md from the JSON files in benchmarks/results/.

    python tools/benchmarks_readme.py [--check]     # --check: exit 1 if the README is not up to date

The figures in that section are read from the files the benchmarks wrote, never typed by hand: each
line names its file. A benchmark without a results file says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "benchmarks" / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def gpu_check() -> list[str]:
    d = _load("gpu_check/gpu_check.json")
    if d is None:
        return [
            "- `gpu_check/gpu_check.json`: not run yet on a GPU (no GPU has been lent to this project "
            "so far); its CPU dry run is a test (`tests/test_gpu_check.py`)."
        ]
    env = d["environment"]
    out = [
        f"- `gpu_check/gpu_check.json`: {env['device']} ({env.get('memory_gb') or 0:.0f} GB), torch {env['torch']}, "
        f"CUDA {env.get('cuda')}; ok = {d['ok']}, {d['elapsed_s']:.0f} s, {len(d['skipped'])} steps skipped, "
        f"{len(d['errors'])} errors."
    ]
    c = d.get("correctness")
    if c:
        out.append(
            f"  - ViT-B {c['img_size']}², {c['amp']}: {c['iterations']} iterations, loss {c['first5_mean']:.2f} → "
            f"{c['last5_mean']:.2f} (first / last 5), {c['s_per_iter']:.3f} s per iteration."
        )
    for r in d.get("table3", []):
        if r["status"] != "ok":
            out.append(f"  - Table 3 {r['backbone']} {r['attention'] or ''} ×{r['images_per_gpu']}: {r['status']}")
            continue
        infer = f", inference {r['infer_s_per_image'] * 1e3:.0f} ms/image" if "infer_s_per_image" in r else ""
        mem = "–" if r["train_peak_mem_gb"] is None else f"{r['train_peak_mem_gb']:.1f}"  # None: a CPU dry run
        out.append(
            f"  - Table 3 {r['backbone']} {r['attention'] or ''} ×{r['images_per_gpu']}: "
            f"{mem} GB, {r['train_s_per_iter']:.3f} s/iter{infer}"
        )
    for r in d.get("table5", []):
        out.append(f"  - Table 5 {r['backbone']}: {r['fps']:.1f} fps (batch 1, {r['amp']}, {r['weights']} weights)")
    for key, value in d.get("ratios_ours", {}).items():
        out.append(f"  - {key}: " + ", ".join(f"{k} ×{v:.2f}" for k, v in value.items()))
    return out


def cpu_benchmarks() -> list[str]:
    out = []
    d = _load("backbone_cpu.json")
    if d:
        hyb = d["summary"].get("hybrid", {})
        out.append(
            f"- `backbone_cpu.json` ({d['device_name']}, torch {d['torch']}, {d['threads']} thread): hybrid "
            f"attention, ours vs timm's ViTDet ViT: time ×{hyb.get('median_time_ratio_ours_vs_ref', 0):.2f}, "
            f"activation memory ×{hyb.get('median_mem_ratio_ours_vs_ref', 0):.2f} (medians over sizes); "
            f"relative position bias costs time ×{hyb.get('median_time_ratio_rel_vs_ours', 0):.2f}."
        )
    d = _load("train_step_cpu.json")
    if d:
        rows = ", ".join(
            f"{r['backbone']} {r['train_step_s']:.2f} s (×{r['train_step_vs_resnet50']:.2f})" for r in d["results"]
        )
        out.append(
            f"- `train_step_cpu.json` ({d['device']}, {d['threads']} thread): Mask R-CNN training step at "
            f"{d['results'][0]['img_size']}², batch {d['results'][0]['batch']}: {rows} of ResNet-50."
        )
    d = _load("data_cpu.json")
    if d:
        p, e = d["paper"]["loader"], d["embedded"]["loader"]
        out.append(
            f"- `data_cpu.json` ({d['device']}): data pipeline per worker, {p['images_per_s_per_worker']:.0f} "
            f"images/s at 1024² (real COCO images, LSJ), {e['images_per_s_per_worker']:.0f} at 128² (synthetic)."
        )
    d = _load("pretrain_cpu.json")
    if d:
        per = ", ".join(f"{k} {v['wall_s']:.0f} s" for k, v in d["methods"].items())
        out.append(
            f"- `pretrain_cpu.json` ({d['device']}): local pre-training of the four methods "
            f"{d['total_wall_s']:.0f} s ({per})."
        )
    d = _load("study_cpu.json")
    if d:
        out.append(
            f"- `study_cpu.json` ({d['machine']['cpus']} cores, commit {d['measured_at_commit']}): the embedded "
            f"study from a fresh clone in {d['targets']['total_min']:.1f} min (install {d['install_s']:.0f} s, "
            f"`--jobs {d['jobs']}`, {d['stages']} stages; summed stage time "
            f"{d['reference_sum_of_stage_s'] / 60:.1f} min)."
        )
    d = _load("step_profile_cpu.json")
    if d:
        ref = d["reference"]
        ms = ref["ms_per_step"]
        parts = ("step/data", "step/forward", "step/backward", "step/optimizer", "backbone.vit", "rpn", "roi_heads")
        top = ", ".join(f"{k.removeprefix('step/')} {ms[k]:.0f}" for k in parts if k in ms)
        variants = "; ".join(
            f"{k} ({', '.join(v['sets'])}) {v['step_ms']:.0f} ms, ×{v['step_vs_reference']:.2f}"
            for k, v in d["variants"].items()
        )
        out.append(
            f"- `step_profile_cpu.json` (load {d['machine']['loadavg'][0]:.1f}): a training step of the embedded "
            f"detector ({ref['config']['backbone']} at {ref['config']['img_size']}², batch {ref['config']['batch']}, "
            f"one thread) {ref['step_ms']:.0f} ms; ms: {top}. In the same run: {variants or 'no variants'}."
        )
    d = _load("calibration_cpu.json")
    if d:
        out.append(
            f"- `calibration_cpu.json`: {len(d['runs'])} calibration runs of the embedded study in "
            f"{len(d['settings'])} settings (the README's calibration table)."
        )
    return out


def section() -> str:
    return "\n".join([BEGIN, *gpu_check(), *cpu_benchmarks(), END])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{README}: no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    new = head + section() + rest.split(END, 1)[1]
    if args.check:
        return 0 if new == text else 1
    README.write_text(new)
    print(f"wrote {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
