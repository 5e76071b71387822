"""Typed configuration of one fine-tuning run: the baseline recipe ⊕ a scale ⊕ an experiment's diff.

`params.yaml` holds the recipe (the one source of truth for numbers) as plain data:

    scale: embedded                 # which entry of `scales` applies (embedded | paper)
    baseline: {data: ..., model: ..., init: ..., train: ..., eval: ...}
    scales: {embedded: {diff}, paper: {diff}}
    recipes: {random: {lr, weight_decay}, mae: {...}, ...}   # the paper's per-initialization values
    experiments: {NAME: {diff}, ...}

`load(params, experiment)` merges them, validates every key and every closed vocabulary once
(the error names the key, the value and the allowed or closest names), and returns an
`ExperimentConfig`. Models never read YAML: they are built from these dataclasses.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

# The paper's five initializations, in the paper's order: the one order of every table, figure and study list.
# A user's own initializations (`python -m studylib.inits add NAME`: a recipe under recipes.NAME) follow them.
INITS = ("random", "supervised", "mocov3", "beit", "mae")
# Closed vocabularies of keys no module below defines; `vocabularies()` adds those the accepting modules define.
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "data.kind": ("synthetic", "coco"),
    "model.attention": ("window", "hybrid", "global"),
    "init.kind": INITS,
    "train.amp": ("bf16", "fp16", "none"),
    "train.device": ("auto", "cpu", "cuda"),
}


def vocabularies() -> dict[str, tuple[str, ...]]:
    """Every closed vocabulary of the config: `VOCABULARIES` and the allowed values of the modules that take
    them (one definition each: the adaptor's kinds and norms, the loader's formats and position treatments, the
    COCO backends)."""
    from .checkpoints.load import ALL_FORMATS, LAYER_SCALE, TREATMENTS
    from .evaluation.coco import BACKENDS
    from .models.adaptor import KINDS, NORMS

    return {
        **VOCABULARIES,
        "model.adaptor": KINDS,
        "model.norm": NORMS,
        "init.format": ALL_FORMATS,
        "init.abs_pos": TREATMENTS,
        "init.rel_pos": TREATMENTS,
        "init.layer_scale": LAYER_SCALE,
        "eval.backend": BACKENDS,
    }


@dataclass
class DataConfig:
    kind: str = "synthetic"  # synthetic (generated, the embedded default) | coco
    root: str = "data/synthetic"  # synthetic: the generated dataset's directory
    synthetic_preset: str = "easy"  # synthetic: difficulty preset of studylib.data.synthetic
    synthetic: dict[str, Any] = field(default_factory=dict)  # synthetic: SyntheticConfig overrides (counts, seed)
    train_ann: str | None = None  # coco: instances_train2017.json (synthetic: derived from root)
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    img_size: int = 128  # the fixed padded square (1024 at paper scale)
    scale_range: tuple[float, float] = (0.1, 2.0)  # large-scale jitter
    num_train_images: int | None = None  # use the first N training images (low-data regime); None = all
    num_val_images: int | None = None
    workers: int = 0  # DataLoader workers per process


@dataclass
class ModelConfig:
    backbone: str = "vit_micro"  # a studylib.models.PRESETS name, or resnet50 / resnet101
    attention: str = "hybrid"  # window (no global block) | hybrid (global at each d/4) | global
    window_size: int | None = None  # None: the pre-training grid
    use_checkpoint: bool = False  # activation checkpointing in every block
    adaptor: str = "multiscale"  # multiscale (the paper's) | single (stride 16 only) | simple (ViTDet)
    head_width: int = 256  # FPN / RPN / box and mask head channels
    fc_dim: int = 1024  # the box head's fc layer
    rois_per_image: int = 512  # RoIs sampled per image for the box and mask heads
    detector_kwargs: dict[str, Any] = field(default_factory=dict)  # other MaskRCNN keywords (rpn_*_top_n_*, ...)
    norm: str = "bn"  # norm of FPN and heads (SyncBN when distributed)
    drop_path: float = 0.1  # 0.1 for ViT-B, 0.3 for ViT-L in the paper
    layer_scale: float | None = None  # initial value when built with layer scale; None: per init.layer_scale
    overrides: dict[str, Any] = field(default_factory=dict)  # any other build_backbone keyword


@dataclass
class InitConfig:
    kind: str = "random"  # random | supervised | mocov3 | beit | mae | a user's (recipes.<kind>)
    checkpoint: str | None = None  # pre-trained file; None: inits/<kind>/checkpoint.pth (the init stage's output)
    format: str = "auto"  # checkpoint layout, detected from the keys by default
    abs_pos: str | None = None  # pt | rand | zero | no; None = the paper's rule for the format
    rel_pos: str | None = None
    layer_scale: str | None = None  # pt (the file's gamma_1 / gamma_2) | none; None = decided from the file


@dataclass
class TrainConfig:
    epochs: float = 25.0  # schedule length in epochs of the training set
    max_iters: int | None = None  # overrides epochs when set (smoke runs)
    batch_size: int = 64  # global batch (split over processes)
    images_per_gpu: int | None = None  # per process and forward; fewer than the share: gradient accumulation
    lr: float | None = None  # at batch 64; None: the initialization's recipe (recipes in params.yaml)
    lr_mult: float = 1.0  # multiplies the recipe's lr (short CPU schedules of the embedded scale)
    base_batch_size: int = 64  # lr follows the global batch: lr * lr_mult * batch_size / base_batch_size
    weight_decay: float | None = None  # None: likewise
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 0.25  # linear warmup, then half-period cosine to 0
    layer_decay: float | None = None  # ViTDet's layer-wise lr decay; off in the paper
    amp: str = "bf16"  # mixed precision on GPU; CPU always runs fp32
    device: str = "auto"
    threads: int | None = None  # CPU threads per process (None: torch's default)
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (CPU resume test)
    checkpoint_every: int = 500  # iterations between atomic checkpoints
    eval_every: int | None = None  # iterations between evaluations; None = at the end only
    log_every: int = 20


@dataclass
class EvalConfig:
    backend: str = "pycocotools"
    tide: bool = True
    num_vis_images: int = 4  # validation images drawn with predictions in the notebook


@dataclass
class ExperimentConfig:
    name: str = "baseline"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """Flat `section.key` view of the resolved config (for logs and tables)."""
        return {f"{s}.{k}": v for s, sub in self.to_dict().items() if isinstance(sub, dict) for k, v in sub.items()}

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def deep_merge(base: dict, diff: dict | None) -> dict:
    """`base` with `diff` merged in (dicts recursively, anything else replaced)."""
    out = copy.deepcopy(base)
    for k, v in (diff or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def closest(name: str, allowed) -> str:
    allowed = list(allowed)
    near = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=3)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return f"allowed: {', '.join(map(str, allowed))}{hint}"


def parse_yaml(text: str) -> Any:
    """YAML 1.2, as DVC reads and writes params.yaml: `no`/`off` stay strings (PyYAML's YAML 1.1 reads them
    as False, and `dvc exp run -S` writes `rel_pos: no` unquoted). A fresh copy each call: callers may edit it."""
    return copy.deepcopy(_parse_yaml_text(text))


@functools.lru_cache(maxsize=16)
def _parse_yaml_text(text: str) -> Any:
    # memoized by content: `study check` resolves every run and re-reads params.yaml ~1,000 times, and
    # ruamel's pure-Python parser takes ~25 ms a time (the check stage took 28 s of the study's critical path)
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(text)


def read_params(params: str | Path | dict) -> dict:
    from ruamel.yaml import YAMLError

    if isinstance(params, dict):
        return params
    path = Path(params)
    try:
        data = parse_yaml(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"params file {path} does not exist") from None
    except YAMLError as e:
        raise ValueError(f"params file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or "baseline" not in data:
        raise ValueError(f"params file {path} has no 'baseline' section")
    return data


def resolve(params: str | Path | dict, experiment: str, sets: list[str] | None = None) -> dict:
    """baseline ⊕ scales[scale] ⊕ experiments[experiment] ⊕ `key=value` overrides, as plain data.

    `experiment` may join several with `+` (`vit_large+adaptor_single`: ViT-L's diff, then the ablation's).
    """
    p = read_params(params)
    experiments = p.get("experiments") or {}
    names = experiment.split("+")
    for name in names:
        if name != "baseline" and name not in experiments:
            raise ValueError(f"unknown experiment {name!r}; {closest(name, ['baseline', *experiments])}")
    scale = p.get("scale")
    scales = p.get("scales") or {}
    if scale is not None and scale not in scales:
        raise ValueError(f"params key 'scale' = {scale!r}; {closest(scale, scales)}")
    merged = deep_merge(p["baseline"], scales.get(scale) if scale else None)
    for name in names:
        merged = deep_merge(merged, experiments.get(name))
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"--set {item!r}: expected section.key=value, e.g. train.lr=1e-4")
        section, name = key.split(".", 1)
        merged.setdefault(section, {})[name] = parse_yaml(value)
    return merged


def load(params: str | Path | dict, experiment: str, sets: list[str] | None = None) -> ExperimentConfig:
    """The validated `ExperimentConfig` of `experiment`, with the initialization's recipe filled in."""
    raw = resolve(params, experiment, sets)
    cfg = from_dict(raw, name=experiment, inits=init_names(params))
    recipes = read_params(params).get("recipes") or {}
    recipe = recipes.get(cfg.init.kind, {})
    if cfg.train.lr is None:
        cfg.train.lr = _required(recipe, "lr", cfg.init.kind)
    if cfg.train.weight_decay is None:
        cfg.train.weight_decay = _required(recipe, "weight_decay", cfg.init.kind)
    return cfg


def _required(recipe: dict, key: str, kind: str):
    if key not in recipe:
        raise ValueError(f"params: train.{key} is null and recipes.{kind}.{key} is not set")
    return recipe[key]


def from_dict(raw: dict, name: str = "baseline", inits=INITS) -> ExperimentConfig:
    """Build and validate an `ExperimentConfig` from plain data (unknown keys are errors); `inits`: the
    allowed init.kind values (the paper's five, and a params file's own: `init_names`)."""
    sections = {f.name: f.type for f in dataclasses.fields(ExperimentConfig) if f.name != "name"}
    hints = get_type_hints(ExperimentConfig)
    raw = dict(raw)
    name = raw.pop("name", name)  # a saved config.yaml carries its name
    for key in raw:
        if key not in sections:
            raise ValueError(f"experiment {name!r}: unknown section {key!r}; {closest(key, sections)}")
    built = {}
    for section in sections:
        cls = hints[section]
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            raise ValueError(f"experiment {name!r}: section {section!r} must be a mapping, got {values!r}")
        built[section] = _build_section(cls, values, f"{name}: {section}")
    cfg = ExperimentConfig(name=name, **built)
    if cfg.init.kind != "random" and not cfg.init.checkpoint:  # the init stage's file
        cfg.init.checkpoint = f"inits/{cfg.init.kind}/checkpoint.pth"
    validate(cfg, inits)
    return cfg


def _build_section(cls, values: dict, where: str):
    hints = get_type_hints(cls)
    for key in values:
        if key not in hints:
            raise ValueError(f"{where}: unknown key {key!r}; {closest(key, hints)}")
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**kwargs)


def _coerce(value: Any, hint, where: str):
    if value is None:
        if type(None) in get_args(hint) or hint is Any:
            return None
        raise ValueError(f"{where} may not be null")
    origin = get_origin(hint)
    args = [a for a in get_args(hint) if a is not type(None)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f"{where} = {value!r}: expected a list of {len(args)} values")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin is not None and args and origin is not dict:  # Optional / Union
        return _coerce(value, args[0], where)
    if hint is float and not isinstance(value, bool):
        try:  # YAML 1.1 reads `1e-4` (no dot) as a string
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where} = {value!r}: expected a number") from None
    if (hint in (int, str, bool) and not isinstance(value, hint)) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{where} = {value!r}: expected {hint.__name__}")
    if origin is dict and not isinstance(value, dict):
        raise ValueError(f"{where} = {value!r}: expected a mapping")
    return value


def validate(cfg: ExperimentConfig, inits=INITS) -> None:
    """Closed vocabularies and cross-field rules; raises ValueError naming the key and allowed values.
    Checks only: the config is not changed."""
    for key, allowed in {**vocabularies(), "init.kind": tuple(inits)}.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and value not in allowed:
            raise ValueError(f"experiment {cfg.name!r}: {key} = {value!r}; {closest(value, allowed)}")
    from .models import PRESETS

    backbones = [*PRESETS, "resnet50", "resnet101"]
    if cfg.model.backbone not in backbones:
        raise ValueError(
            f"experiment {cfg.name!r}: model.backbone = {cfg.model.backbone!r}; "
            f"{closest(cfg.model.backbone, backbones)}"
        )
    if cfg.init.kind != "random" and not cfg.init.checkpoint:
        raise ValueError(f"experiment {cfg.name!r}: init.kind = {cfg.init.kind!r} needs init.checkpoint")
    if cfg.init.kind == "random" and cfg.init.checkpoint:
        raise ValueError(
            f"experiment {cfg.name!r}: init.kind = 'random' takes no init.checkpoint ({cfg.init.checkpoint!r})"
        )
    lo, hi = cfg.data.scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"experiment {cfg.name!r}: data.scale_range = {[lo, hi]} must satisfy 0 < low <= high")
    if cfg.data.kind == "coco":
        missing = [k for k in ("train_ann", "train_images", "val_ann", "val_images") if not getattr(cfg.data, k)]
        if missing:
            raise ValueError(f"experiment {cfg.name!r}: data.kind = 'coco' needs data.{', data.'.join(missing)}")
    if cfg.train.batch_size < 1 or cfg.train.epochs <= 0:
        raise ValueError(f"experiment {cfg.name!r}: train.batch_size and train.epochs must be positive")


def init_order(names) -> list[str]:
    """`names` in the study's order: the paper's five (INITS order), then the others as given."""
    names = list(dict.fromkeys(names))
    return [i for i in INITS if i in names] + [i for i in names if i not in INITS]


def init_names(params: str | Path | dict) -> list[str]:
    """Every initialization `params` knows: the paper's five, then each user one (a recipe under its name)."""
    return init_order([*INITS, *(read_params(params).get("recipes") or {})])


def experiment_names(params: str | Path | dict) -> list[str]:
    return list((read_params(params).get("experiments") or {}).keys())
