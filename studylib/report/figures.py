"""Seaborn figures of the study, saved as PNGs with stable bytes (Agg, fixed dpi, no Software stamp).

Also the drawing used by the notebooks: instances (boxes + masks) on an image, ground truth beside
predictions, loss curves from a run's history.csv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from ..config import init_order

DPI = 100
sns.set_theme(context="paper", style="whitegrid")


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG whose bytes depend only on its content (Agg, fixed dpi, no Software stamp), close it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # the same renderer whatever the session's backend (inline, Qt, ...)
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return path


PALETTE = [tuple(int(255 * c) for c in rgb) for rgb in sns.color_palette("bright", 10)]


LABEL_PX = 11  # label text height on the drawn picture
MIN_SIDE = 384  # pictures are enlarged (nearest) to at least this side, so labels stay small beside 128² objects


def draw_instances(
    image: torch.Tensor,
    boxes: torch.Tensor,
    masks: torch.Tensor | None = None,
    labels: Sequence[str] | None = None,
    min_side: int = MIN_SIDE,
) -> np.ndarray:
    """An HWC uint8 picture of `image` (CHW in [0, 1]) with binary `masks` (N×H×W) drawn translucent, thin xyxy
    `boxes` and one label per instance outside its box (above it, or below when it touches the top edge)."""
    canvas = (image.clamp(0, 1) * 255).to(torch.uint8).cpu()
    # explicit colors: torchvision's default palette draws the first instance in black (0, 0, 0)
    colors = [PALETTE[i % len(PALETTE)] for i in range(max(len(boxes), len(masks) if masks is not None else 0))]
    if masks is not None and len(masks):
        canvas = draw_segmentation_masks(canvas, masks.bool().cpu(), alpha=0.4, colors=colors[: len(masks)])
    scale = max(1, -(-min_side // min(canvas.shape[1:])))
    canvas = canvas.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    boxes = boxes.cpu().float() * scale
    if len(boxes):
        canvas = draw_bounding_boxes(canvas, boxes, width=1, colors=colors[: len(boxes)])
    picture = Image.fromarray(canvas.permute(1, 2, 0).numpy())
    for box, text, color in zip(boxes.tolist(), labels or [], colors):
        _label(ImageDraw.Draw(picture), box, text, color)
    return np.asarray(picture)


def _label(draw: ImageDraw.ImageDraw, box: list[float], text: str, color: tuple[int, int, int]) -> None:
    """`text` on a patch of the instance's color just outside `box` (above, else below, else inside the top)."""
    font = ImageFont.load_default(size=LABEL_PX)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 2
    width, height = draw.im.size
    x = min(max(0, int(box[0])), max(0, width - w))
    y = int(box[1]) - h - 1 if box[1] - h - 1 >= 0 else int(box[3]) + 2 if box[3] + h + 2 <= height else int(box[1])
    draw.rectangle((x, y, x + w - 1, y + h - 1), fill=color)
    ink = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)
    draw.text((x + 2 - left, y + 1 - top), text, fill=ink, font=font)


def image_grid(
    pictures: list[list[np.ndarray]], row_titles: Sequence[str], col_titles: Sequence[str], cell: float = 2.2
) -> plt.Figure:
    """Rows × columns of pictures with titles."""
    rows, cols = len(pictures), max(len(r) for r in pictures)
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows), squeeze=False)
    for r, row in enumerate(pictures):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                ax.imshow(row[c])
            if r == 0 and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=8)
        axes[r][0].text(
            -0.05, 0.5, row_titles[r], transform=axes[r][0].transAxes, ha="right", va="center", fontsize=8, rotation=90
        )
    fig.tight_layout()
    return fig


def target_picture(image: torch.Tensor, target: dict, names: dict[int, str]) -> np.ndarray:
    return draw_instances(image, target["boxes"], target.get("masks"), [names[int(k)] for k in target["labels"]])


def prediction_picture(
    image: torch.Tensor, output: dict, names: dict[int, str], score_thresh: float = 0.5, mask_thresh: float = 0.5
) -> np.ndarray:
    """Detections of a torchvision Mask R-CNN output (scores >= score_thresh) drawn on `image`."""
    keep = output["scores"] >= score_thresh
    masks = output["masks"][keep][:, 0] >= mask_thresh if "masks" in output else None
    labels = [f"{names.get(int(k), k)} {s:.2f}" for k, s in zip(output["labels"][keep], output["scores"][keep])]
    return draw_instances(image, output["boxes"][keep], masks, labels)


def results_picture(
    image: torch.Tensor, results: list[dict], names: dict[int, str], score_thresh: float = 0.5
) -> np.ndarray:
    """COCO segm results of one image (RLE masks, xywh boxes, category ids) drawn on `image`."""
    from pycocotools import mask as mask_utils

    kept = [r for r in results if r["score"] >= score_thresh]
    # segm results files need no "bbox" (COCO's format); the box is then the mask's own
    xywh = [r["bbox"] if "bbox" in r else mask_utils.toBbox(r["segmentation"]).tolist() for r in kept]
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in xywh], dtype=torch.float32).reshape(-1, 4)
    masks = torch.from_numpy(np.stack([mask_utils.decode(r["segmentation"]) for r in kept])) if kept else None
    labels = [f"{names.get(r['category_id'], r['category_id'])} {r['score']:.2f}" for r in kept]
    return draw_instances(image, boxes, masks, labels)


def loss_curves(history: str | Path | pd.DataFrame, title: str = "") -> plt.Figure:
    """Every loss of a run's history.csv against the iteration (log scale)."""
    df = pd.read_csv(history) if not isinstance(history, pd.DataFrame) else history
    losses = [c for c in df.columns if c.startswith("loss")]
    long = df.melt(id_vars="iteration", value_vars=losses, var_name="loss", value_name="value")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.lineplot(long, x="iteration", y="value", hue="loss", ax=ax)
    ax.set_yscale("log")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def training_curves(histories: dict[str, str | Path]) -> plt.Figure:
    """Total training loss against the iteration, one line per initialization (each run's history.csv).

    The same curves dvclive logs for `dvc plots`; drawn here so the report needs no CDN-loaded Vega.
    """
    frames = [pd.read_csv(path).assign(init=init) for init, path in histories.items()]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    df = pd.concat(frames)
    sns.lineplot(df, x="iteration", y="loss", hue="init", hue_order=_present(df.to_dict("records")), ax=ax)
    ax.set_yscale("log")
    ax.set_ylabel("training loss")
    fig.tight_layout()
    return fig


def convergence(summary: dict[str, Any], metric: str = "bbox/AP") -> plt.Figure:
    """Figure 2: AP against fine-tuning epochs on the sweep's shared grid, one line per initialization, each
    point the mean over its seeds with ± std bars (a panel per model size)."""
    sizes = summary.get("convergence_by_size") or {"": summary["convergence"]}
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.6), squeeze=False)
    for ax, (size, conv) in zip(axes[0], sizes.items()):
        inits = init_order(conv)
        colors = dict(zip(inits, sns.color_palette(n_colors=len(inits))))
        for init in inits:
            pts = [(float(e), m) for e, m in conv[init].items() if m.get(metric) is not None]
            if not pts:
                continue
            x = [e for e, _ in pts]
            y = [100 * m[metric] for _, m in pts]
            err = [100 * (m.get(f"{metric}_std") or 0.0) for _, m in pts]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=init, color=colors[init])
        ax.set_xscale("log", base=2)
        ticks = sorted({float(e) for pts in conv.values() for e in pts})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel("fine-tuning epochs")
        ax.set_ylabel(f"{metric} ×100 (mean ± std over seeds)")
        ax.set_title(size)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def pretrain_length(summary: dict[str, Any], metric: str = "bbox/AP") -> plt.Figure:
    """Figure 3: AP against the MAE pre-training length."""
    rows = [{"steps": float(k), "AP": 100 * m[metric]} for k, m in summary["pretrain_length"].items()]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    sns.lineplot(pd.DataFrame(rows), x="steps", y="AP", marker="o", ax=ax)
    ax.set_xlabel("MAE pre-training length (steps)")
    ax.set_ylabel(f"{metric} ×100")
    fig.tight_layout()
    return fig


def tide(summary: dict[str, Any]) -> plt.Figure:
    """Figure 4: ΔAP box (IoU 0.5) per TIDE error type, bars per initialization."""
    rows = [
        {"init": init, "error": err, "dAP": v}
        for init, errs in summary["tide"].items()
        for err, v in errs.items()
        if not err.endswith("_std")
    ]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    sns.barplot(pd.DataFrame(rows), x="error", y="dAP", hue="init", hue_order=_present(rows), ax=ax)
    ax.set_ylabel("ΔAP box @ IoU 0.5")
    fig.tight_layout()
    return fig


def main_results(summary: dict[str, Any]) -> plt.Figure:
    """Table 1 as bars: AP box and AP mask per initialization, error bars = std over seeds."""
    inits = init_order(summary["main"])
    x = np.arange(len(inits))
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    colors = sns.color_palette(n_colors=2)
    for j, key in enumerate(("bbox/AP", "segm/AP")):
        m = [summary["main"][i] for i in inits]
        ax.bar(
            x + (j - 0.5) * 0.38,
            [100 * r[key] for r in m],
            0.38,
            yerr=[100 * r.get(f"{key}_std", 0.0) for r in m],
            label=key,
            color=colors[j],
            capsize=2,
        )
    ax.set_xticks(x, inits)
    ax.set_ylabel("AP ×100 (mean over seeds)")
    ax.legend()
    fig.tight_layout()
    return fig


def _present(rows: list[dict]) -> list[str]:
    return init_order(r["init"] for r in rows)
