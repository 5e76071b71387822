"""The official release layouts of the five initializations, and their conversion to our ViT's names.

A checkpoint file is read (`read_checkpoint`), its state dict found (`unwrap`), its format told from
its keys (`detect_format`) and its tensors renamed to our layout (`convert`). Layouts, from the
official code:

- mae    (facebookresearch/mae `models_mae.py`): {'model': sd}; timm ViT names, fused qkv with bias,
         fixed sin-cos `pos_embed` (1, 1+N, C) with a zero class slot, final `norm`; the full
         pre-training model adds `mask_token` and `decoder_*`.
- beit   (microsoft/unilm `beit/modeling_pretrain.py`, `modeling_finetune.py`): {'model'|'module': sd};
         `attn.qkv.weight` with separate `attn.q_bias` / `attn.v_bias` (k bias is zero), layer scale
         `gamma_1` / `gamma_2`, relative bias tables ((2s-1)^2 + 3, heads) shared
         (`rel_pos_bias.relative_position_bias_table`) or per block
         (`blocks.i.attn.relative_position_bias_table`), `relative_position_index` buffers,
         `lm_head`, `mask_token`; no absolute embedding by default.
- mocov3 (facebookresearch/moco-v3 `main_moco.py`, `moco/builder.py`, `vits.py`): {'state_dict': sd}
         with `module.base_encoder.` (timm ViT + projection `head.*`), `module.momentum_encoder.`,
         `module.predictor.`; fixed sin-cos `pos_embed` with a zero class slot.
- deit   (facebookresearch/deit): {'model': sd} in timm `VisionTransformer` names with a `head`.
- timm   a plain state dict (.pth or .safetensors) in the same names.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..models.pos_embed import get_2d_sincos_pos_embed

FORMATS = ("mae", "beit", "mocov3", "deit", "timm")
WRAPPERS = ("model", "module", "state_dict")  # top-level keys that hold the state dict, tried in order

# Our block parameters that a checkpoint maps onto one to one (timm names).
_BLOCK_PARAM = re.compile(r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$")
_PATCH_PARAM = re.compile(r"^patch_embed\.proj\.(weight|bias)$")
_LAYER_SCALE = re.compile(r"^blocks\.(\d+)\.(?:gamma_([12])|ls([12])\.gamma)$")
_QV_BIAS = re.compile(r"^blocks\.(\d+)\.attn\.([qv])_bias$")
_REL_TABLE = re.compile(r"^(?:rel_pos_bias|blocks\.(\d+)\.attn)\.relative_position_bias_table$")
SHARED_REL_TABLE = "rel_pos_bias.relative_position_bias_table"

# Checkpoint keys (after prefix removal) that have no place in a detection backbone, and why.
_COMMON_DROPS = [
    (r"^cls_token$", "class token: our ViT has none (detection uses the patch tokens only)"),
    (r"^norm\.(weight|bias)$", "final norm: our ViT has none (the adaptor taps block outputs directly)"),
    (r"^fc_norm\.", "norm of the pooled classifier features"),
    (r"^head\.", "classification / projection head"),
]
_DROPS: dict[str, list[tuple[str, str]]] = {
    "mae": [(r"^mask_token$", "MAE decoder mask token"), (r"^decoder_", "MAE decoder (pre-training only)")],
    "beit": [
        (r"^mask_token$", "BEiT mask token (pre-training only)"),
        (r"^lm_head\.", "BEiT masked-image-modeling head (pre-training only)"),
        (r"relative_position_index$", "relative position index buffer: recomputed for our grids"),
    ],
    "mocov3": [
        (r"^(module\.)?momentum_encoder\.", "MoCo v3 momentum encoder (a moving average of the base encoder)"),
        (r"^(module\.)?predictor\.", "MoCo v3 predictor MLP"),
    ],
    "deit": [
        (r"^dist_token$", "DeiT distillation token"),
        (r"^head_dist\.", "DeiT distillation head"),
        (r"^pre_logits\.", "pre-logits layer of the classifier"),
    ],
    "timm": [
        (r"^dist_token$", "distillation token"),
        (r"^reg_token$", "register tokens"),
        (r"^head_dist\.", "distillation head"),
        (r"^pre_logits\.", "pre-logits layer of the classifier"),
        (r"^attn_pool\.", "attention-pooling classifier head"),
    ],
}


@dataclass
class Converted:
    """A checkpoint in our names, before the paper's positional rules are applied."""

    format: str = ""  # the layout it was converted from (one of FORMATS)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # our name -> tensor (patch_embed.*, blocks.*)
    sources: dict[str, str] = field(default_factory=dict)  # our name -> checkpoint key(s)
    pos_embed: tuple[str, torch.Tensor] | None = None  # (checkpoint key, (1, P + N, C))
    num_prefix_tokens: int = 0  # P: class / distillation / register slots in front of pos_embed
    rel_tables: dict[str, torch.Tensor] = field(default_factory=dict)  # checkpoint key -> ((2s-1)^2 + 3, heads)
    dropped: dict[str, str] = field(default_factory=dict)  # checkpoint key -> why
    unexpected: dict[str, list[int]] = field(default_factory=dict)  # checkpoint key -> shape
    notes: list[str] = field(default_factory=list)


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in a .pth / .pth.tar / .safetensors file, on CPU, without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    # official training checkpoints (BEiT, MAE, DeiT) store their argparse.Namespace under 'args'
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle refusal or corruption: say which file
            raise ValueError(f"cannot read checkpoint {str(path)!r} safely (weights_only): {e}") from e


def unwrap(obj: Any, where: str = "checkpoint") -> tuple[dict[str, torch.Tensor], str | None]:
    """(state dict, top-level key it was under or None) of a loaded checkpoint object."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where}: expected a dict, got {type(obj).__name__}")
    wrapper = None
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        wrapper = next((k for k in WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if wrapper is None:
            raise ValueError(
                f"{where}: no state dict found; top-level keys {sorted(map(str, obj))[:20]}, "
                f"expected one of {list(WRAPPERS)} or a plain state dict"
            )
        obj = obj[wrapper]
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{where}: state dict entries that are not tensors: {bad[:10]}")
    return dict(obj), wrapper


def detect_format(checkpoint: Mapping[str, Any] | str | Path) -> str:
    """The release layout of a checkpoint (a path, a loaded object or a state dict), told from its keys."""
    obj = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    state, wrapper = unwrap(obj, str(checkpoint) if isinstance(checkpoint, (str, Path)) else "checkpoint")
    keys = list(state)
    if any(re.match(r"^(module\.)?(base_encoder|momentum_encoder)\.", k) for k in keys):
        return "mocov3"
    if any(k.endswith(("attn.q_bias", "relative_position_bias_table")) for k in keys):
        return "beit"
    if "mask_token" in keys or any(k.startswith("decoder_") for k in keys):
        return "mae"
    pos = state.get("pos_embed")
    if pos is not None and not any(k.startswith("head.") for k in keys):
        layout = sincos_layout(pos)  # a headless encoder with its method's fixed table: MAE release, converted MoCo
        if layout is not None:
            return layout
    return "deit" if wrapper == "model" else "timm"


def sincos_layout(pos_embed: torch.Tensor) -> str | None:
    """'mae' or 'mocov3' if a (1, [1+] N, C) table is that method's fixed 2-D sin-cos table, else None.

    MAE puts the column (x) code in the first half of the channels; MoCo v3 builds its grid with
    `meshgrid(arange(w), arange(h))`, which puts the row (y) code first: the halves are swapped.
    """
    n, C = pos_embed.shape[-2:]
    for prefix in (1, 0):
        side = int(round((n - prefix) ** 0.5))
        if side * side != n - prefix or C % 4 or side == 0:
            continue
        ref = torch.from_numpy(get_2d_sincos_pos_embed(C, side, cls_token=bool(prefix)))
        table = pos_embed.reshape(n, C).float()
        if torch.allclose(table, ref, atol=1e-4):
            return "mae"
        if torch.allclose(table, torch.cat([ref[:, C // 2 :], ref[:, : C // 2]], dim=1), atol=1e-4):
            return "mocov3"
    return None


def _drop_reason(fmt: str, key: str) -> str | None:
    for pattern, reason in _DROPS[fmt] + _COMMON_DROPS:
        if re.search(pattern, key):
            return reason
    return None


def _strip(fmt: str, key: str) -> str:
    if fmt == "mocov3":
        return re.sub(r"^(module\.)?base_encoder\.", "", key)
    return re.sub(r"^(module\.|_orig_mod\.)+", "", key)  # DDP / torch.compile prefixes (BEiT v2 kept 'module.')


def convert(fmt: str, state: Mapping[str, torch.Tensor]) -> Converted:
    """Rename a state dict of layout `fmt` to our ViT's names; sort every key into a bucket."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; allowed: {', '.join(FORMATS)}")
    out, qv = Converted(format=fmt), {}
    for key, t in state.items():
        if fmt == "mocov3" and re.match(r"^(module\.)?base_encoder\.head\.", key):
            out.dropped[key] = "MoCo v3 projection head"
            continue
        if (reason := _drop_reason(fmt, key)) is not None:
            out.dropped[key] = reason
            continue
        k = _strip(fmt, key)
        if (reason := _drop_reason(fmt, k)) is not None:
            out.dropped[key] = reason
        elif k == "pos_embed":
            out.pos_embed = (key, t)
        elif _BLOCK_PARAM.match(k) or _PATCH_PARAM.match(k):
            out.tensors[k], out.sources[k] = t, key
        elif (m := _LAYER_SCALE.match(k)) and fmt in ("beit", "deit", "timm"):
            name = f"blocks.{m[1]}.ls{m[2] or m[3]}.gamma"
            out.tensors[name], out.sources[name] = t, key
        elif (m := _QV_BIAS.match(k)) and fmt == "beit":
            qv[(int(m[1]), m[2])] = (key, t)
        elif _REL_TABLE.match(k) and fmt == "beit":
            out.rel_tables[key] = t
        else:
            out.unexpected[key] = list(t.shape)
    _fuse_qv_bias(qv, out)
    names = {_strip(fmt, k): t for k, t in state.items()}
    out.num_prefix_tokens = (
        ("cls_token" in names) + ("dist_token" in names) + (names["reg_token"].shape[1] if "reg_token" in names else 0)
    )
    if out.pos_embed is not None:
        out.num_prefix_tokens = _prefix_count(out.pos_embed, out.num_prefix_tokens)
        layout = sincos_layout(out.pos_embed[1])
        if layout:
            out.notes.append(f"{out.pos_embed[0]} is a fixed 2-D sin-cos table ({layout} channel order)")
    if fmt == "mocov3":
        out.notes.append(
            "MoCo v3's sin-cos table encodes the row in its first channel half (meshgrid over (w, h)); "
            "its rows follow the patch sequence, so it is transferred as stored"
        )
    return out


def _fuse_qv_bias(qv: dict[tuple[int, str], tuple[str, torch.Tensor]], out: Converted) -> None:
    """BEiT's separate q/v biases -> our fused qkv bias, with the implicit zero k bias made explicit."""
    for i in sorted({i for i, _ in qv}):
        if (i, "q") not in qv or (i, "v") not in qv:
            lone = qv.get((i, "q")) or qv.get((i, "v"))
            out.unexpected[lone[0]] = list(lone[1].shape)
            continue
        (qk, q), (vk, v) = qv[(i, "q")], qv[(i, "v")]
        name = f"blocks.{i}.attn.qkv.bias"
        out.tensors[name], out.sources[name] = torch.cat([q, torch.zeros_like(v), v]), f"{qk} + zeros + {vk}"


def _prefix_count(pos_embed: tuple[str, torch.Tensor], expected: int) -> int:
    """Prefix slots of a position table: the token count found, or 0 for a prefix-free square table."""
    key, t = pos_embed
    if t.ndim != 3 or t.shape[0] != 1:
        raise ValueError(f"checkpoint {key}: expected shape (1, tokens, C), got {tuple(t.shape)}")
    for p in (expected, 0):
        side = int(round((t.shape[1] - p) ** 0.5))
        if side * side == t.shape[1] - p:
            return p
    raise ValueError(
        f"checkpoint {key} of shape {tuple(t.shape)}: {t.shape[1]} tokens is not a square grid "
        f"plus {expected} prefix token(s)"
    )
