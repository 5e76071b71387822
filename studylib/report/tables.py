"""The study's tables from results/summary.json, as pandas frames written to markdown and CSV.

    frames = tables(summary)             # {"table1_main": DataFrame, ...}
    write(frames, "results")             # results/<name>.md and results/<name>.csv

AP values are shown ×100 with one decimal (± std over seeds where there are several); the paper's
published numbers (published.yaml) stand in a column beside ours. The README includes the .md files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..config import init_order

PUBLISHED = Path(__file__).with_name("published.yaml")


def published() -> dict[str, Any]:
    return yaml.safe_load(PUBLISHED.read_text())


def ap(m: dict[str, Any], key: str) -> str:
    """AP ×100 with one decimal, `± std` when several seeds; 'OOM' for an out-of-memory run."""
    if m.get("status") == "oom":
        return "OOM"
    v = m.get(key)
    if v is None:
        return "–"
    std = m.get(f"{key}_std")
    return f"{100 * v:.1f} ± {100 * std:.1f}" if std and m.get("n_seeds", 1) > 1 else f"{100 * v:.1f}"


def num(v: Any, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}g}"


def paper(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, list):
        return " / ".join(paper(v) for v in value)
    return str(value)


def vs_random(m: dict[str, Any], ref: dict[str, Any] | None, key: str = "bbox/AP") -> str:
    """`m` minus random initialization's `key` (×100, signed): a difference of means, no verdict."""
    if ref is None or m is ref or m.get(key) is None or ref.get(key) is None:
        return "–"
    return f"{100 * (m[key] - ref[key]):+.1f}"


def paired(m: dict[str, Any]) -> str:
    """Table 1's paired difference to random (`bbox/AP_vs_random`), ×100 with its 95% t-interval, and the
    verdict in words: "beats random" only where the whole interval is above zero."""
    d = m.get("bbox/AP_vs_random") or {}
    if d.get("mean") is None:
        return "–"
    ci, n = d.get("ci95"), len(d.get("seeds", []))
    if not ci:
        return f"{100 * d['mean']:+.1f} (n = {n}: no interval)"
    verdict = "beats random" if ci[0] > 0 else "below random" if ci[1] < 0 else "not separable from random"
    return f"{100 * d['mean']:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}] ({verdict}; n = {n})"


def main_table(summary: dict[str, Any], pub: dict[str, Any], size: str | None = None) -> pd.DataFrame:
    """Table 1: each init's best schedule (the paper's rule) and every schedule's box AP, the paired
    difference to random at equal length, and the paper's numbers."""
    main = summary["main"] if size is None else summary["main_by_size"][size]
    at = next((m["bbox/AP_vs_random"]["epochs"] for m in main.values() if "bbox/AP_vs_random" in m), None)
    rows = []
    for init in init_order(main):
        m = main[init]
        sched = m.get("schedules") or {}
        rows.append(
            {
                "init": init,
                "best epochs": f"{m['epochs']:g}" if m.get("epochs") is not None else "–",
                "seeds": m.get("n_seeds"),
                "AP box": ap(m, "bbox/AP"),
                "AP mask": ap(m, "segm/AP"),
                "AP50 box": ap(m, "bbox/AP50"),
                "box AP by epochs": ", ".join(
                    f"{e}: {'–' if v is None else f'{100 * v:.1f}'}" for e, v in sched.items()
                ),
                f"box − random at {at:g} epochs (paired, 95% CI)" if at is not None else "box − random": paired(m),
                "paper ViT-B (box / mask)": paper(pub["main"].get(init, {}).get("vit_base")),
                "paper ViT-L (box / mask)": paper(pub["main"].get(init, {}).get("vit_large")),
            }
        )
    return pd.DataFrame(rows)


def convergence_table(summary: dict[str, Any], pub: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for init, points in summary["convergence"].items():
        for epochs, m in points.items():
            ref = summary["convergence"].get("random", {}).get(epochs)
            rows.append(
                {
                    "init": init,
                    "epochs": float(epochs),
                    "seeds": len(m.get("seeds", [])),
                    "AP box": ap(m, "bbox/AP"),
                    "AP mask": ap(m, "segm/AP"),
                    "box − random (means, same epochs)": vs_random(m, ref),
                }
            )
    order = init_order(r["init"] for r in rows)
    rows.sort(key=lambda r: (order.index(r["init"]), r["epochs"]))
    for init, points in pub["convergence"].items():
        for epochs, v in points.items():
            rows.append(
                {
                    "init": f"{init} (paper, ViT-B)",
                    "epochs": float(epochs),
                    "seeds": 1,
                    "AP box": paper(v[0]),
                    "AP mask": paper(v[1]),
                    "box − random (means, same epochs)": "–",
                }
            )
    return pd.DataFrame(rows)


def ablation_table(rows: dict[str, dict[str, Any]], fields: tuple[str, ...]) -> pd.DataFrame:
    out = []
    for name, m in rows.items():
        out.append(
            {
                "run": name,
                **{f: m.get(f) for f in ("size", "epochs") if f in m},
                **{f: m.get(f) for f in fields},
                "AP box": ap(m, "bbox/AP"),
                "AP mask": ap(m, "segm/AP"),
                "train time (s)": num(m.get("train/time_s")),
                "time / iter (s)": num(m.get("train/iter_time_s")),
                "peak train mem (GB)": num(m.get("train/peak_mem_gb")),
                "infer time / image (s)": num(m.get("infer/time_per_image_s")),
            }
        )
    return pd.DataFrame(out)


def attention_table(rows: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Table 3 with the images per GPU (per process) and the attention kernel beside the numbers; its footnote
    (`attrs["footnote"]`, written under the table) says what the peak memory measured."""
    df = ablation_table(rows, ("attention", "checkpointing", "images_per_gpu", "attention_kernel"))
    df = df.rename(columns={"images_per_gpu": "images / GPU", "attention_kernel": "attention kernel"})
    meanings = sorted({m["peak_mem_meaning"] for m in rows.values() if m.get("peak_mem_meaning")})
    df.attrs["footnote"] = (
        "Peak train mem: " + ("; ".join(meanings) if meanings else "not recorded by these runs") + "."
    )
    return df


def pretrain_length_table(summary: dict[str, Any], pub: dict[str, Any]) -> pd.DataFrame:
    rows = [
        {
            "MAE pre-training": f"{k} steps" if k != "release" else "release file",
            "AP box": ap(m, "bbox/AP"),
            "AP mask": ap(m, "segm/AP"),
        }
        for k, m in summary["pretrain_length"].items()
    ]
    rows += [
        {"MAE pre-training": f"{k} epochs (paper, ViT-L)", "AP box": paper(v), "AP mask": "–"}
        for k, v in pub["pretrain_length"].items()
    ]
    return pd.DataFrame(rows)


def tide_table(summary: dict[str, Any]) -> pd.DataFrame:
    rows = [
        {"init": init, **{e: f"{t[e]:.2f}" for e in ("cls", "loc", "both", "dupe", "bkg", "miss") if e in t}}
        for init, t in summary["tide"].items()
    ]
    return pd.DataFrame(rows)


def complexity_table(summary: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for name, c in summary["complexity"].items():
        rows.append(
            {
                "experiment": name,
                "backbone": c["backbone"],
                "input": f"{c['img_size']}²" if c.get("input", "square") == "square" else f"long side {c['img_size']}",
                "weights": "trained" if c.get("weights") else "random",
                "params (M)": f"{c['params_m']:.1f}",
                "GFLOPs (mult-add = 2)": f"{c['gflops']:.1f} ± {c['gflops_std']:.1f}",
                "activations (M)": f"{c['activations_m']:.1f} ± {c['activations_m_std']:.1f}",
                "detections": "–" if "detections" not in c else f"{c['detections']:.1f} ± {c['detections_std']:.1f}",
                "fps": f"{c['fps']:.2f}",
                "device": c["device"],
                "AP box": "no run" if c.get("bbox/AP") is None else f"{100 * c['bbox/AP']:.1f}",
            }
        )
    return pd.DataFrame(rows)


def tables(summary: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Every table of the report, keyed by its file name."""
    pub = published()
    return {
        "table1_main": main_table(summary, pub),
        **{f"table1_main_{size}": main_table(summary, pub, size) for size in summary.get("sizes", [])[1:]},
        "figure2_convergence": convergence_table(summary, pub),
        "table2_multiscale": ablation_table(summary["multiscale"], ("adaptor",)),
        "table3_attention": attention_table(summary["attention"]),
        "table4_positional": ablation_table(summary["positional"], ("init", "abs_pos", "rel_pos")),
        "figure3_pretrain_length": pretrain_length_table(summary, pub),
        "figure4_tide": tide_table(summary),
        "table5_complexity": complexity_table(summary),
    }


def write(frames: dict[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """<name>.md (GitHub markdown) and <name>.csv for each frame; returns the paths written."""
    from ..io import atomic_write_text

    out_dir = Path(out_dir)
    paths = []
    for name, df in frames.items():
        md = df.to_markdown(index=False) if len(df) else "(no run of this kind in the study's params)"
        if len(df) and df.attrs.get("footnote"):
            md += "\n\n" + df.attrs["footnote"]
        paths.append(atomic_write_text(out_dir / f"{name}.md", md + "\n"))
        paths.append(atomic_write_text(out_dir / f"{name}.csv", df.to_csv(index=False, lineterminator="\n")))
    return paths
