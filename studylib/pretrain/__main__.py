"""`python -m studylib.pretrain --method mae --images DIR --out PATH [--steps N --batch-size B --seed S ...]`

Every field of `PretrainConfig` is a flag (`--mask-ratio 0.75`, `--moco-t 0.2`, ...); backbone
shape overrides are `--override depth=4 --override embed_dim=64`. Prints the run summary as JSON.
`--launcher slurm` runs it as a one-task SLURM job (cluster.yaml; studylib.launch) and waits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any

from .. import launch
from .config import ENCODER_KEYS, METHODS, PretrainConfig

_SPECIAL = {"overrides", "resume", "progress", "betas"}


def _scalar_type(annotation: Any) -> type:
    """int / float / bool / str from a field annotation such as 'int | None'."""
    text = str(annotation)
    for name, typ in (("bool", bool), ("float", float), ("int", int), ("str", str)):
        if name in text:
            return typ
    raise TypeError(f"no CLI type for annotation {annotation!r}")


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or key not in ENCODER_KEYS:
        raise argparse.ArgumentTypeError(
            f"--override {text!r}: expected KEY=VALUE with KEY in {', '.join(ENCODER_KEYS)}"
        )
    return key, float(value) if key == "mlp_ratio" else int(value)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m studylib.pretrain", description=__doc__.split("\n")[0])
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument(
        "--images",
        required=True,
        help="image folder (.png/.jpg/.jpeg, recursively); for 'supervised' "
        "the folder the annotation file's file_name entries are relative to",
    )
    p.add_argument("--out", required=True, help="checkpoint path (loss log, summary next to it)")
    p.add_argument("--ann-file", help="COCO instances JSON (method 'supervised' only)")
    p.add_argument(
        "--override",
        action="append",
        type=_parse_override,
        default=[],
        metavar="KEY=VALUE",
        help=f"backbone shape override ({', '.join(ENCODER_KEYS)})",
    )
    p.add_argument("--betas", type=float, nargs=2, metavar=("B1", "B2"))
    p.add_argument("--resume", action="store_true", help="continue from <out stem>.resume.pth")
    p.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        help="local: this process; slurm: one SLURM job (default: $STUDYLIB_LAUNCHER, else local)",
    )
    p.add_argument("--cluster", metavar="YAML", help="SLURM options (default: $STUDYLIB_CLUSTER, else ./cluster.yaml)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar")
    hints = typing.get_type_hints(PretrainConfig)
    for f in dataclasses.fields(PretrainConfig):
        if f.name in _SPECIAL:
            continue
        flag = "--" + f.name.replace("_", "-")
        typ = _scalar_type(hints[f.name])
        if typ is bool:
            p.add_argument(
                flag, type=lambda s: s.lower() in ("1", "true", "yes"), metavar="BOOL", help=f"default: {f.default}"
            )
        else:
            p.add_argument(flag, type=typ, help=f"default: {f.default if f.default is not None else 'method default'}")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = vars(parser().parse_args(argv))
    method, images, out, ann_file = args.pop("method"), args.pop("images"), args.pop("out"), args.pop("ann_file")
    launcher, cluster = args.pop("launcher"), args.pop("cluster")
    overrides = dict(args.pop("override"))
    fields = {k: v for k, v in args.items() if v is not None}
    if "betas" in fields:
        fields["betas"] = tuple(fields["betas"])
    cfg = PretrainConfig(overrides=overrides, **fields)
    summary = launch.pretrain(method, images, out, cfg, ann_file=ann_file, launcher=launcher, cluster=cluster)
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return summary


if __name__ == "__main__":
    main()
