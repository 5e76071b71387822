"""`python -m studylib.checkpoints inspect PATH [--fmt F] [--num-heads N]`: what loading PATH would do.

Builds a ViT whose shapes match the checkpoint (embed_dim, depth, patch, mlp ratio, qkv bias, layer
scale, pre-training grid; heads from a BEiT table, `--num-heads`, or embed_dim // 64 since fused qkv
weights do not tell), loads the checkpoint into it and prints the detected format and the load
report as JSON. No detector is built.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from ..models.vit import ViT
from .formats import convert, detect_format, read_checkpoint, unwrap
from .load import ALL_FORMATS, PAPER_RULES, TREATMENTS, load_pretrained, positional_flags


def infer_vit_kwargs(
    path: str, fmt: str = "auto", num_heads: int | None = None, abs_pos: str | None = None, rel_pos: str | None = None
) -> tuple[str, dict]:
    """(the detected format, ViT constructor keywords matching the shapes in a checkpoint)."""
    state, wrapper = unwrap(read_checkpoint(path), path)
    detected = detect_format(state if wrapper is None else {wrapper: state})
    used = detected if fmt == "auto" else fmt
    conv = convert(used, state)
    w = conv.tensors.get("patch_embed.proj.weight")
    if w is None:
        raise ValueError(f"{path}: no patch_embed.proj.weight found; not a ViT checkpoint of a known layout")
    embed_dim, in_chans, patch = w.shape[0], w.shape[1], w.shape[-1]
    blocks = {int(m[1]) for k in conv.tensors if (m := re.match(r"^blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    if num_heads is None and conv.rel_tables:
        num_heads = next(iter(conv.rel_tables.values())).shape[1]
    num_heads = num_heads or max(1, embed_dim // 64)
    if conv.pos_embed is not None:
        side = int(round((conv.pos_embed[1].shape[1] - conv.num_prefix_tokens) ** 0.5))
    elif conv.rel_tables:
        side = (int(round((next(iter(conv.rel_tables.values())).shape[0] - 3) ** 0.5)) + 1) // 2
    else:
        side = 14  # the usual 224 / 16; nothing in the file says otherwise
    fc1 = conv.tensors.get("blocks.0.mlp.fc1.weight")
    rules = PAPER_RULES[used]
    return detected, dict(
        img_size=side * patch,
        pretrain_img_size=side * patch,
        patch_size=patch,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=fc1.shape[0] / embed_dim if fc1 is not None else 4.0,
        qkv_bias="blocks.0.attn.qkv.bias" in conv.tensors,
        window_size=side,
        layer_scale_init=0.1 if "blocks.0.ls1.gamma" in conv.tensors else None,
        pretrain_use_cls_token=conv.num_prefix_tokens > 0,
        **positional_flags(abs_pos or rules[0], rel_pos or rules[1]),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studylib.checkpoints", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="detect the format and print the load report as JSON")
    p.add_argument("path")
    p.add_argument("--fmt", default="auto", choices=[f for f in ALL_FORMATS if f != "random"])
    p.add_argument(
        "--num-heads", type=int, default=None, help="attention heads (default: from a BEiT table, else embed_dim // 64)"
    )
    p.add_argument("--abs-pos", choices=TREATMENTS, default=None, help="override the format's rule")
    p.add_argument("--rel-pos", choices=TREATMENTS, default=None, help="override the format's rule")
    args = parser.parse_args(argv)
    try:
        detected, kwargs = infer_vit_kwargs(args.path, args.fmt, args.num_heads, args.abs_pos, args.rel_pos)
        report = load_pretrained(
            ViT(**kwargs), args.path, fmt=args.fmt, abs_pos=args.abs_pos, rel_pos=args.rel_pos, strict=False
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"detected_format": detected, "model": kwargs, "report": report.to_dict()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
