"""Load a pre-trained checkpoint into the ViT by the paper's rules, and report exactly what was done.

The paper's positional rules (Li et al. 2021, §3.1): a BEiT backbone transfers its relative
position biases and starts its absolute embeddings at random; every other initialization
transfers its absolute embeddings and starts relative biases at zero. Each is overridable per
run, which is how the positional ablation is expressed:

    pt    from the checkpoint (an error if it has none)
    rand  trunc-normal, std 0.02
    zero  zeros
    no    absent: the backbone must have been built with use_abs_pos / use_rel_pos False

What the file lacks is decided from the file, never a crash (`plan` says it before a model is built,
the report's notes say it after): no layer scale in the file -> none in the model
(`layer_scale='none'`; 'pt' keeps the file's gamma_1 / gamma_2); a rule 'pt' for a part the file
lacks falls back to 'zero' (relative bias) or 'rand' (absolute embedding); a BEiT file with an
absolute embedding and no relative bias (BEiT's --abs_pos_emb release, the paper's BEiT†) follows
the paper's BEiT† row: abs_pos='pt', rel_pos='zero'. An explicit treatment the file cannot serve
stays an error.

Absolute tables are resized (bicubic) from the checkpoint's grid to our stored pre-training grid;
relative tables lose BEiT's 3 class-token rows and are resized (bicubic) to the window and to the
global grid. BEiT per-block tables are averaged over the blocks that share each of our tables:
the mean is the single table closest (least squares) to all the biases it replaces, whereas
the first block's table would fit one block and ignore the rest.

Nothing is silently skipped: a width, depth, patch or layer-scale mismatch is an error naming the
keys and shapes; a backbone tensor (patch_embed.*, blocks.*) left unloaded or unexpected is an
error; other unexpected keys are an error unless strict=False, and then they are reported.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..io import atomic_write_json
from ..models.pos_embed import resize_abs_pos_embed, resize_rel_pos_table
from ..models.vit import ViT
from .formats import FORMATS, SHARED_REL_TABLE, Converted, convert, detect_format, read_checkpoint, unwrap

TREATMENTS = ("pt", "rand", "zero", "no")
LAYER_SCALE = ("pt", "none")  # layer scale: the checkpoint's gamma_1 / gamma_2, or none in the model
ALL_FORMATS = ("auto", *FORMATS, "random")
# The paper's rule per format: (abs_pos, rel_pos).
PAPER_RULES: dict[str, tuple[str, str]] = {fmt: ("pt", "zero") for fmt in FORMATS}
PAPER_RULES.update(beit=("rand", "pt"), random=("rand", "zero"))
_INIT = {"rand": "trunc-normal std 0.02", "zero": "zeros"}
_REL_PARAMS = ("rel_pos_window.relative_position_bias_table", "rel_pos_global.relative_position_bias_table")


@dataclass
class LoadReport:
    """What `load_pretrained` did; `to_dict()` is JSON-ready, `save(path)` writes it atomically."""

    format: str
    path: str | None
    abs_pos: str
    rel_pos: str
    layer_scale: str = "none"  # pt: the checkpoint's; none: the model has none; init: random init's constant
    loaded: dict[str, dict] = field(default_factory=dict)  # ours -> {"from": checkpoint key(s), "shape"}
    resized: dict[str, dict] = field(default_factory=dict)  # ours -> {"from": key, "from_shape", "to_shape"}
    dropped: dict[str, str] = field(default_factory=dict)  # checkpoint key -> why it has no place in ours
    missing: dict[str, str] = field(default_factory=dict)  # ours not from the checkpoint -> how initialized
    unexpected: dict[str, list[int]] = field(default_factory=dict)  # checkpoint key -> shape (strict=False only)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON, atomically (a reader sees the old file or the whole new one)."""
        return atomic_write_json(path, self.to_dict())


def _check_treatment(name: str, value: str | None) -> None:
    if value is not None and value not in TREATMENTS:
        raise ValueError(f"{name}={value!r}: allowed {', '.join(TREATMENTS)} (or None for the paper's rule)")


def positional_flags(abs_pos: str | None = None, rel_pos: str | None = None) -> dict[str, bool]:
    """ViT build flags for a treatment pair: a part exists unless its treatment is 'no'."""
    _check_treatment("abs_pos", abs_pos)
    _check_treatment("rel_pos", rel_pos)
    return {"use_abs_pos": abs_pos != "no", "use_rel_pos": rel_pos != "no"}


@dataclass(frozen=True)
class Plan:
    """What loading a file will do, decided from the file: format and the three treatments, with why."""

    format: str
    abs_pos: str
    rel_pos: str
    layer_scale: str
    notes: tuple[str, ...] = ()


def plan(
    path: str | Path, fmt: str = "auto", abs_pos: str | None = None, rel_pos: str | None = None, layer_scale=None
) -> Plan:
    """The `Plan` of loading `path` (None treatments: the paper's rule, or its fallback for what the file lacks)."""
    state, wrapper = unwrap(read_checkpoint(path), str(path))
    return _decide(_convert(state, wrapper, fmt)[0], str(path), abs_pos, rel_pos, layer_scale)


def _convert(state: dict, wrapper: str | None, fmt: str) -> tuple[Converted, str, str]:
    """(converted checkpoint, format used, format detected)."""
    if fmt not in ALL_FORMATS or fmt == "random":
        raise ValueError(f"fmt={fmt!r}: allowed {', '.join(f for f in ALL_FORMATS if f != 'random')} for a file")
    detected = detect_format(state if wrapper is None else {wrapper: state})
    used = detected if fmt == "auto" else fmt
    return convert(used, state), used, detected


def _decide(conv: Converted, where: str, abs_pos: str | None, rel_pos: str | None, layer_scale: str | None) -> Plan:
    """The paper's rule for `conv`'s format where the file serves it, else its stated fallback (module docstring)."""
    _check_treatment("abs_pos", abs_pos)
    _check_treatment("rel_pos", rel_pos)
    if layer_scale not in (None, *LAYER_SCALE):
        raise ValueError(f"layer_scale={layer_scale!r}: allowed {', '.join(LAYER_SCALE)} (or None: from the file)")
    fmt, (rule_abs, rule_rel), notes = conv.format, PAPER_RULES[conv.format], []
    has_ls = any(_is_layer_scale(k) for k in conv.tensors)
    if rel_pos is None and rule_rel == "pt" and not conv.rel_tables:
        rel_pos = "zero"
        notes.append(
            f"rel_pos: the {fmt!r} rule is 'pt' but the file has no relative position bias table: zero-initialized"
        )
    if abs_pos is None and rule_abs == "rand" and fmt == "beit" and not conv.rel_tables and conv.pos_embed is not None:
        abs_pos = "pt"
        notes.append("abs_pos: a BEiT file with an absolute embedding and no relative bias (BEiT†): transferred ('pt')")
    if abs_pos is None and rule_abs == "pt" and conv.pos_embed is None:
        abs_pos = "rand"
        notes.append(f"abs_pos: the {fmt!r} rule is 'pt' but the file has no absolute embedding: trunc-normal ('rand')")
    if layer_scale is None:
        layer_scale = "pt" if has_ls else "none"
        notes.append(
            "layer scale: the file's (gamma_1 / gamma_2 or ls1 / ls2), kept ('pt')"
            if has_ls
            else "layer scale: none (the file has no gamma_1 / gamma_2 or ls1 / ls2 tensors)"
        )
    elif layer_scale == "pt" and not has_ls:
        raise ValueError(f"layer_scale='pt' but {where} has no layer scale (gamma_1 / gamma_2); use 'none'")
    return Plan(fmt, abs_pos or rule_abs, rel_pos or rule_rel, layer_scale, tuple(notes))


def _is_layer_scale(name: str) -> bool:
    return re.match(r"^blocks\.\d+\.ls[12]\.gamma$", name) is not None


def load_pretrained(
    backbone: ViT,
    path: str | Path | None,
    fmt: str = "auto",
    abs_pos: str | None = None,
    rel_pos: str | None = None,
    strict: bool = True,
    layer_scale: str | None = None,
) -> LoadReport:
    """Load `path` (format `fmt`, 'auto' = detected) into `backbone` by the paper's rules.

    `path=None` with `fmt='random'` gives the paper's random initialization. abs_pos / rel_pos
    override the format's positional rule, layer_scale ('pt' | 'none') the file's own (see the module
    docstring); the decision is the one `plan` gives. Returns the `LoadReport`.
    """
    if fmt not in ALL_FORMATS:
        raise ValueError(f"fmt={fmt!r}: allowed {', '.join(ALL_FORMATS)}")
    _check_treatment("abs_pos", abs_pos)
    _check_treatment("rel_pos", rel_pos)
    if (path is None) != (fmt == "random"):
        raise ValueError(f"fmt={fmt!r} with path={path!r}: fmt='random' takes no file, every other format needs one")
    if fmt == "random":
        if layer_scale == "pt":
            raise ValueError("layer_scale='pt' needs a checkpoint; fmt='random' has none")
        return _random(backbone, abs_pos, rel_pos)

    state, wrapper = unwrap(read_checkpoint(path), str(path))
    conv, used, detected = _convert(state, wrapper, fmt)
    decided = _decide(conv, str(path), abs_pos, rel_pos, layer_scale)
    if decided.layer_scale == "none":
        for name in [k for k in conv.tensors if _is_layer_scale(k)]:
            conv.dropped[conv.sources.pop(name)] = "layer_scale=none: the checkpoint's layer scale is not used"
            del conv.tensors[name]
    report = LoadReport(
        format=used,
        path=str(path),
        abs_pos=decided.abs_pos,
        rel_pos=decided.rel_pos,
        layer_scale=decided.layer_scale,
        dropped=dict(conv.dropped),
        notes=list(conv.notes) + list(decided.notes),
    )
    if wrapper:
        report.notes.insert(0, f"state dict under top-level key {wrapper!r}")
    if used != detected:
        report.notes.append(f"format forced to {used!r} (auto-detection says {detected!r})")
    _check_parts(backbone, report.abs_pos, report.rel_pos)
    _check_structure(backbone, conv, str(path))
    _check_unexpected(conv, str(path), strict, report)

    ours = backbone.state_dict()
    with torch.no_grad():
        for name, t in conv.tensors.items():
            ours[name].copy_(t)
            report.loaded[name] = {"from": conv.sources[name], "shape": list(t.shape)}
        _load_abs_pos(backbone, conv, report)
        _load_rel_pos(backbone, conv, report)
    return report


def _random(backbone: ViT, abs_pos: str | None, rel_pos: str | None) -> LoadReport:
    rules = PAPER_RULES["random"]
    has_ls = any(_is_layer_scale(k) for k in backbone.state_dict())
    report = LoadReport(
        format="random",
        path=None,
        abs_pos=abs_pos or rules[0],
        rel_pos=rel_pos or rules[1],
        layer_scale="init" if has_ls else "none",
    )
    for name, value in (("abs_pos", report.abs_pos), ("rel_pos", report.rel_pos)):
        if value == "pt":
            raise ValueError(f"{name}='pt' needs a checkpoint; fmt='random' has none")
    _check_parts(backbone, report.abs_pos, report.rel_pos)
    backbone.init_weights()
    backbone.reset_positional(abs_pos=_mode(report.abs_pos), rel_pos=_mode(report.rel_pos))
    for name in backbone.state_dict():
        report.missing[name] = "random init (BEiT's: trunc-normal 0.02, attn.proj / mlp.fc2 rescaled by depth)"
    if backbone.pos_embed is not None:
        report.missing["pos_embed"] = f"{_INIT[report.abs_pos]} (abs_pos={report.abs_pos})"
    for name in _REL_PARAMS:
        if name in report.missing:
            report.missing[name] = f"{_INIT[report.rel_pos]} (rel_pos={report.rel_pos})"
    report.notes.append("the paper's random initialization (ViT.init_weights)")
    return report


def _mode(treatment: str) -> str | None:
    return treatment if treatment in ("rand", "zero") else None


def _check_parts(backbone: ViT, abs_pos: str, rel_pos: str) -> None:
    """A treatment other than 'no' needs the part built; 'no' needs it absent."""
    has_rel = backbone.rel_pos_window is not None or backbone.rel_pos_global is not None
    for name, value, present, flag in (
        ("abs_pos", abs_pos, backbone.pos_embed is not None, "use_abs_pos"),
        ("rel_pos", rel_pos, has_rel, "use_rel_pos"),
    ):
        if value == "no" and present:
            raise ValueError(
                f"{name}='no' but the backbone has that part: build it with {flag}=False "
                f"(studylib.checkpoints.positional_flags gives the flags)"
            )
        if value != "no" and not present:
            raise ValueError(f"{name}={value!r} but the backbone was built with {flag}=False: pass {name}='no'")


def _check_structure(backbone: ViT, conv: Converted, where: str) -> None:
    """Depth, patch size, layer scale, then every shape: one error naming all offending keys."""
    blocks = {int(m[1]) for k in list(conv.tensors) + list(conv.rel_tables) if (m := re.match(r"^blocks\.(\d+)\.", k))}
    if blocks and max(blocks) + 1 != backbone.depth:
        raise ValueError(
            f"{where}: checkpoint has {max(blocks) + 1} blocks (blocks.0-{max(blocks)}), "
            f"the backbone has depth={backbone.depth}"
        )
    w = conv.tensors.get("patch_embed.proj.weight")
    if w is None:
        raise ValueError(f"{where}: no patch_embed.proj.weight found; not a ViT checkpoint of a known layout")
    if tuple(w.shape[-2:]) != (backbone.patch_size,) * 2:
        raise ValueError(
            f"{where}: patch_embed.proj.weight {tuple(w.shape)} has a {w.shape[-2]}x{w.shape[-1]} "
            f"kernel, the backbone patch_size={backbone.patch_size}; build it with "
            f"patch_size={w.shape[-1]} (patch kernels are not resampled)"
        )
    ours = backbone.state_dict()
    ls = sorted(conv.sources[k] for k in conv.tensors if ".ls" in k and k not in ours)
    if ls:
        raise ValueError(
            f"{where}: checkpoint has layer scale ({', '.join(ls[:4])}, ...) but the backbone was "
            f"built without it: build it with layer_scale_init (e.g. 0.1)"
        )
    extra = [f"{conv.sources[k]} -> {k}" for k in conv.tensors if k not in ours]
    if extra:
        raise ValueError(f"{where}: checkpoint tensors the backbone lacks: {extra[:8]} (built with qkv_bias=False?)")
    bad = [
        f"{conv.sources.get(k, k)} {tuple(t.shape)} vs backbone {k} {tuple(ours[k].shape)}"
        for k, t in conv.tensors.items()
        if k in ours and ours[k].shape != t.shape
    ]
    if bad:
        raise ValueError(f"{where}: shape mismatch (width / heads / mlp ratio differ?):\n  " + "\n  ".join(bad))
    missing = [k for k in ours if re.match(r"^(patch_embed|blocks)\.", k) and k not in conv.tensors]
    if missing:
        raise ValueError(
            f"{where}: backbone tensors the checkpoint does not provide: {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''} (a qkv bias or layer scale the checkpoint lacks? layer_scale="
            f"'none' builds none)"
        )


def _check_unexpected(conv: Converted, where: str, strict: bool, report: LoadReport) -> None:
    backbone_keys = [k for k in conv.unexpected if re.search(r"(^|\.)(patch_embed|blocks)\.", k)]
    if backbone_keys:
        raise ValueError(
            f"{where}: backbone tensors with no place in ours: "
            + ", ".join(f"{k} {conv.unexpected[k]}" for k in backbone_keys[:8])
        )
    if conv.unexpected and strict:
        raise ValueError(
            f"{where}: unexpected keys (not on the {report.format!r} drop list): "
            + ", ".join(f"{k} {v}" for k, v in list(conv.unexpected.items())[:8])
            + "; pass strict=False to load anyway and list them in the report"
        )
    report.unexpected = dict(conv.unexpected)


def _load_abs_pos(backbone: ViT, conv: Converted, report: LoadReport) -> None:
    mode, ckpt = report.abs_pos, conv.pos_embed
    if mode != "pt":
        if ckpt is not None:
            report.dropped[ckpt[0]] = f"abs_pos={mode}: the checkpoint's absolute embedding is not used"
        if mode != "no":
            backbone.reset_positional(abs_pos=mode)
            report.missing["pos_embed"] = f"{_INIT[mode]} (abs_pos={mode})"
        return
    if ckpt is None:
        raise ValueError(
            f"abs_pos='pt' but {report.path} has no absolute position embedding "
            f"(format {report.format!r}); use 'rand', 'zero' or 'no'"
        )
    key, table = ckpt
    p = conv.num_prefix_tokens
    side = int(round((table.shape[1] - p) ** 0.5))
    ours = backbone.pos_embed
    if table.shape[-1] != ours.shape[-1]:
        raise ValueError(
            f"{report.path}: {key} {tuple(table.shape)} vs backbone pos_embed {tuple(ours.shape)}: width differs"
        )
    grid = resize_abs_pos_embed(table.float(), backbone.pretrain_grid, p, (side, side)).reshape(1, -1, ours.shape[-1])
    if backbone.num_prefix_tokens:
        cls = table[:, :1].float() if p else torch.zeros_like(grid[:, :1])
        grid = torch.cat([cls, grid], dim=1)
        if not p:
            report.notes.append("pos_embed class slot set to zeros (the checkpoint has none; unused in forward)")
    elif p:
        report.notes.append(f"{key}: {p} prefix slot(s) dropped (our stored table has none)")
    ours.copy_(grid)
    if (side, side) == tuple(backbone.pretrain_grid) and table.shape == ours.shape:
        report.loaded["pos_embed"] = {"from": key, "shape": list(ours.shape)}
    else:
        report.resized["pos_embed"] = {"from": key, "from_shape": list(table.shape), "to_shape": list(ours.shape)}


def _load_rel_pos(backbone: ViT, conv: Converted, report: LoadReport) -> None:
    mode = report.rel_pos
    if mode != "pt":
        for key in conv.rel_tables:
            report.dropped[key] = f"rel_pos={mode}: the checkpoint's relative position bias is not used"
        if mode != "no":
            backbone.reset_positional(rel_pos=mode)
            for name in _REL_PARAMS:
                if getattr(backbone, name.split(".")[0]) is not None:
                    report.missing[name] = f"{_INIT[mode]} (rel_pos={mode})"
        return
    if not conv.rel_tables:
        hint = (
            "; it has an absolute embedding instead (BEiT's --abs_pos_emb config): abs_pos='pt', rel_pos='zero'"
            if report.format == "beit" and conv.pos_embed is not None
            else ""
        )
        raise ValueError(
            f"rel_pos='pt' but {report.path} has no relative position bias table "
            f"(format {report.format!r}); use 'rand', 'zero' or 'no'{hint}"
        )
    for key, t in conv.rel_tables.items():
        if t.ndim != 2 or t.shape[1] != backbone.num_heads:
            raise ValueError(
                f"{report.path}: {key} {tuple(t.shape)} vs backbone num_heads={backbone.num_heads}: "
                f"expected ((2s-1)^2 + 3, {backbone.num_heads})"
            )
    shared = conv.rel_tables.get(SHARED_REL_TABLE)
    for name, blocks in (
        ("rel_pos_window", [i for i, b in enumerate(backbone.blocks) if b.window_size]),
        ("rel_pos_global", list(backbone.global_blocks)),
    ):
        module = getattr(backbone, name)
        if module is None:
            continue
        if shared is not None:
            keys, table = [SHARED_REL_TABLE], shared
        else:
            keys = [f"blocks.{i}.attn.relative_position_bias_table" for i in blocks]
            absent = [k for k in keys if k not in conv.rel_tables]
            if absent:
                raise ValueError(f"{report.path}: per-block relative tables missing for {absent[:4]}")
            table = torch.stack([conv.rel_tables[k] for k in keys]).float().mean(0)
        table = table[:-3].float()  # BEiT's last 3 rows: cls->token, token->cls, cls->cls
        side = (int(round(table.shape[0] ** 0.5)) + 1) // 2
        if (2 * side - 1) ** 2 != table.shape[0]:
            raise ValueError(f"{report.path}: {keys[0]} has {table.shape[0] + 3} rows, not (2s-1)^2 + 3")
        new = resize_rel_pos_table(table, (side, side), module.grid)
        module.relative_position_bias_table.copy_(new)
        source = keys[0] if len(keys) == 1 else f"mean of {len(keys)} blocks' tables ({keys[0]}, ...)"
        entry = f"{name}.relative_position_bias_table"
        if (side, side) == tuple(module.grid):
            report.loaded[entry] = {"from": source, "shape": list(new.shape)}
        else:
            report.resized[entry] = {
                "from": source,
                "from_shape": [table.shape[0] + 3, table.shape[1]],
                "to_shape": list(new.shape),
            }
    report.notes.append(
        "relative bias: BEiT's 3 class-token rows removed"
        + ("" if shared is not None else "; per-block tables averaged over the blocks sharing each of ours")
    )
