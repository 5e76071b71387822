"""Bring your own pre-training method: a named initialization benchmarked beside the paper's five.

    python -m studylib.inits add NAME --checkpoint PATH [--format auto|mae|beit|mocov3|timm]
                                      [--recipe-like mae] [--lr LR] [--weight-decay WD]
    python -m studylib.inits add NAME --checkpoint main=B.pth --checkpoint vit_large=L.pth   # a file per size
    python -m studylib.inits list
    python -m studylib.inits remove NAME

`add` inspects the file (the loader's report, on a model built without memory), then writes three
entries of params.yaml -- comments and layout kept, the result validated as `python -m
studylib.profile` does -- and prints the stages the next `dvc repro` runs:

    recipes.NAME: {lr, weight_decay}                   # the recipe of --recipe-like, --lr / --weight-decay
    study.inits: [..., NAME]                           # Table 1, Figure 4, the prediction grids
    study.checkpoints.NAME: {file: PATH or {size experiment: PATH}, format: F}   # auto: the detected one

The same entries may be written by hand. A user initialization is fine-tuned at every length of the
pre-trained sweep (study.epochs.pretrained x study.schedules: Table 1 takes its best, Figure 2 draws
them all) with the paper's positional rule of its format; every stage of
dvc.yaml reads only its own init's entries, so adding one to a finished study runs that init's
stages and the report, nothing of the others.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap

from . import config
from .checkpoints import FORMATS, PAPER_RULES, LoadReport, detect_format, load_pretrained
from .profile import _yaml  # the round trip that keeps params.yaml's comments and layout

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # a run folder, a DVC stage key and a params key
CLI_FORMATS = ("auto", *FORMATS)
LOCAL_FORMAT = {"supervised": "deit"}  # the release layout local pre-training writes, where not the method's name


def user_inits(params: str | Path | dict) -> list[str]:
    """The params' own initializations (beyond the paper's five), in the study's order."""
    return [i for i in config.init_names(params) if i not in config.INITS]


def inspect(params: str | Path | dict, kind: str, experiment: str, path: str | Path | None = None) -> LoadReport:
    """The loader's report of `kind`'s file for `experiment`'s backbone (built on the meta device: no memory,
    no weights): a missing file, another width, depth or patch size raises, naming the file."""
    import torch

    from .engine.build import backbone_kwargs
    from .models import build_backbone
    from .report import study

    cfg = config.load(params, experiment, study.init_sets(params, kind))
    if path is None:
        files = study.release_files(params, kind)
        if cfg.model.backbone not in files:
            raise ValueError(
                f"initialization {kind!r}: study.checkpoints.{kind} names no file for experiment "
                f"{experiment!r} ({cfg.model.backbone}); give one: --checkpoint {experiment}=FILE"
            )
        path = files[cfg.model.backbone]
    with torch.device("meta"):
        backbone = build_backbone(cfg.model.backbone, **backbone_kwargs(cfg))
    try:
        return load_pretrained(backbone, path, cfg.init.format, cfg.init.abs_pos, cfg.init.rel_pos, strict=False)
    except ValueError as e:
        raise ValueError(f"initialization {kind!r} for experiment {experiment!r} ({cfg.model.backbone}): {e}") from None


def check_files(params: str | Path | dict) -> dict[str, dict[str, LoadReport]]:
    """Every user initialization's file loads into every model the study fine-tunes it with: the loader's
    report per init and experiment."""
    from .report import study

    plan = study.runs(params)
    out: dict[str, dict[str, LoadReport]] = {}
    for kind in user_inits(params):
        experiments = {r.experiment: None for runs in plan.values() for r in runs if r.init == kind}
        out[kind] = {e: inspect(params, kind, e) for e in experiments}
    return out


def _flow(**items: Any) -> CommentedMap:
    m = CommentedMap(items)
    m.fa.set_flow_style()
    return m


def parse_checkpoint(values: list[str], sizes: list[str]) -> str | CommentedMap:
    """--checkpoint FILE, or --checkpoint SIZE=FILE once per size experiment of study.sizes."""
    pairs = [v.split("=", 1) if v.split("=", 1)[0] in sizes and "=" in v else [None, v] for v in values]
    if len(pairs) == 1 and pairs[0][0] is None:
        return pairs[0][1]
    plain = [v for s, v in pairs if s is None]
    if plain:
        raise ValueError(
            f"--checkpoint {plain[0]}: with several files, give each as SIZE=FILE, SIZE one of "
            f"study.sizes ({', '.join(sizes)})"
        )
    return _flow(**dict(pairs))


def _recipe(p: dict, like: str, lr: float | None, weight_decay: float | None) -> CommentedMap:
    recipes = p.get("recipes") or {}
    if like not in recipes:
        raise ValueError(f"--recipe-like {like!r}; {config.closest(like, recipes)}")
    base = recipes[like]
    return _flow(
        lr=base["lr"] if lr is None else lr, weight_decay=base["weight_decay"] if weight_decay is None else weight_decay
    )


def add(
    name: str,
    checkpoint: list[str],
    fmt: str = "auto",
    like: str = "mae",
    lr: float | None = None,
    weight_decay: float | None = None,
    params_path: str | Path = "params.yaml",
    dry_run: bool = False,
) -> dict:
    """Add initialization `name` to `params_path`; returns {"text", "format", "reports": {experiment: LoadReport}}."""
    from .io import atomic_write_text
    from .report import study

    params_path = Path(params_path)
    y = _yaml()
    params = y.load(params_path.read_text())
    known = config.init_names(params)
    if not NAME.match(name):
        raise ValueError(
            f"initialization name {name!r}: letters, digits and _ only, starting with a letter "
            f"(it names run folders and DVC stages)"
        )
    if name in known:
        mine = [i for i in known if i not in config.INITS]
        raise ValueError(
            f"initialization {name!r} exists already (the paper's: {', '.join(config.INITS)}; "
            f"yours: {', '.join(mine) or 'none'}); choose another name"
            + (f" or `python -m studylib.inits remove {name}` first" if name in mine else "")
        )
    if fmt not in CLI_FORMATS:
        raise ValueError(f"--format {fmt!r}; {config.closest(fmt, CLI_FORMATS)}")
    s = params["study"]
    entry = parse_checkpoint(checkpoint, list(s["sizes"]))
    first = entry if isinstance(entry, str) else next(iter(entry.values()))
    if not Path(first).is_file():
        raise ValueError(f"initialization {name!r}: checkpoint file {first!r} does not exist")
    used = detect_format(first) if fmt == "auto" else fmt
    params["recipes"][name] = _recipe(params, like, lr, weight_decay)
    s["inits"].append(name)
    s["checkpoints"][name] = _flow(file=entry, format=used)
    buf = io.StringIO()
    y.dump(params, buf)
    text = buf.getvalue()
    plain = config.parse_yaml(text)
    study.check(plain)  # every run's config and every user file; an invalid result is never written
    reports = check_files(plain)[name]
    if not dry_run:
        atomic_write_text(params_path, text)
    notes = []
    if lr is not None and config.resolve(plain, "main")["train"].get("lr") is not None:
        notes.append(
            f"scale {plain.get('scale')!r} sets train.lr for every initialization: recipes.{name}.lr "
            f"applies where it does not (the paper scale)"
        )
    return {"text": text, "format": used, "detected": fmt == "auto", "reports": reports, "notes": notes}


def remove(name: str, params_path: str | Path = "params.yaml", dry_run: bool = False) -> dict:
    """Take user initialization `name` (its recipe, study entries and runs) out of `params_path`."""
    from .io import atomic_write_text
    from .report import study

    params_path = Path(params_path)
    y = _yaml()
    params = y.load(params_path.read_text())
    mine = user_inits(params)
    if name in config.INITS:
        raise ValueError(
            f"{name!r} is one of the paper's initializations; `remove` takes out yours "
            f"({', '.join(mine) or 'none'}); edit study.inits to leave it out of the study"
        )
    if name not in mine:
        raise ValueError(f"no initialization {name!r} in {params_path}; yours: {', '.join(mine) or 'none'}")
    s = params["study"]
    del params["recipes"][name]
    if name in s["inits"]:
        s["inits"].remove(name)
    s["checkpoints"].pop(name, None)
    dropped = []
    for family in ("ablations",):
        for key in [k for k, item in (s[family] or {}).items() if item["init"] == name]:
            del s[family][key]
            dropped.append(f"study.{family}.{key}")
    buf = io.StringIO()
    y.dump(params, buf)
    text = buf.getvalue()
    study.check(config.parse_yaml(text))
    if not dry_run:
        atomic_write_text(params_path, text)
    return {"text": text, "dropped": dropped}


def rows(params: str | Path | dict) -> list[dict[str, Any]]:
    """One row per initialization of the study: its file(s), format, recipe and the positional rule it gets."""
    from .report import study

    p = config.read_params(params)
    s = study.study(p)
    base = config.load(p, "baseline")
    recipes = p.get("recipes") or {}
    out = []
    for kind in config.init_order(s["inits"]):
        files, fmt = study.release_entry(s["checkpoints"].get(kind), f"study.checkpoints.{kind}")
        fmt = fmt or base.init.format
        if kind == "random":
            where, shown = "none", "random"
        else:
            where = files or f"pre-trained locally (inits/{kind}/checkpoint.pth)"
            shown = fmt
        rule_fmt = shown
        if shown == "auto":  # the file's layout: detected, or the layout local pre-training writes
            local = Path(f"inits/{kind}/checkpoint.pth")
            src = files if isinstance(files, str) else local
            rule_fmt = detect_format(src) if Path(src).is_file() else LOCAL_FORMAT.get(kind, kind)
            shown = f"auto ({rule_fmt})"
        rule = PAPER_RULES[rule_fmt]
        abs_pos, rel_pos = base.init.abs_pos or rule[0], base.init.rel_pos or rule[1]
        out.append(
            {
                "init": kind,
                "origin": "paper" if kind in config.INITS else "yours",
                "file": where,
                "format": shown,
                "recipe": f"lr {recipes[kind]['lr']:g}, weight decay {recipes[kind]['weight_decay']:g}",
                "positions": f"abs {abs_pos}, rel {rel_pos}",
            }
        )
    return out


def next_stages(root: str | Path = ".") -> list[str]:
    """The stages `dvc repro` would run now in the DVC project at `root` (`dvc status`)."""
    import contextlib

    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(".") as repo:
        return sorted(repo.status())


def _print_report(experiment: str, r: LoadReport) -> None:
    print(
        f"  {experiment}: {r.path}: format {r.format}, abs_pos {r.abs_pos}, rel_pos {r.rel_pos}; "
        f"{len(r.loaded)} tensors loaded, {len(r.resized)} resized {sorted(r.resized) or ''}, "
        f"{len(r.dropped)} dropped, {len(r.missing)} initialized here {sorted(r.missing) or ''}"
    )
    for note in r.notes:
        print(f"    note: {note}")
    if r.unexpected:
        print(f"    unexpected keys (not loaded): {sorted(r.unexpected)}")


def _print_next(params_path: Path, name: str) -> None:
    from dvc.exceptions import NotDvcRepoError

    from .report import study

    if name in config.init_names(params_path):
        own = [r.out_dir for runs in study.runs(params_path).values() for r in runs if r.init == name]
        print(f"{name}'s runs: inits/{name}, {', '.join(own)}")
    try:
        stages = next_stages(params_path.parent)
    except NotDvcRepoError:
        print(f"{params_path.parent.resolve()} is not a DVC project: `dvc init` to run the study")
        return
    print(f"the next `dvc repro` runs {len(stages)} stage(s): {', '.join(stages) or 'none'}")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m studylib.inits", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add", help="add an initialization (a checkpoint file) to the study")
    a.add_argument("name")
    a.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="[SIZE=]PATH",
        help="the file; at several model sizes one SIZE=PATH per experiment of study.sizes",
    )
    a.add_argument("--format", default="auto", choices=CLI_FORMATS, help="the file's layout (auto: detected)")
    a.add_argument(
        "--recipe-like",
        default="mae",
        help="the initialization whose lr / weight decay (and Figure 2 schedules) it takes (default: mae)",
    )
    a.add_argument("--lr", type=float, help="lr at batch 64, instead of the recipe's")
    a.add_argument("--weight-decay", type=float, help="instead of the recipe's")
    a.add_argument("--dry-run", action="store_true", help="print the new params instead of writing them")
    r = sub.add_parser("remove", help="take one of your initializations out")
    r.add_argument("name")
    r.add_argument("--dry-run", action="store_true")
    sub.add_parser("list", help="every initialization: file, format, recipe, positional rule")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    params_path = Path(args.params)
    try:
        if args.command == "add":
            out = add(
                args.name,
                args.checkpoint,
                args.format,
                args.recipe_like,
                args.lr,
                args.weight_decay,
                params_path,
                args.dry_run,
            )
            print(
                f"{args.name}: format {out['format']}{' (detected)' if out['detected'] else ''}; the loader's report:"
            )
            for experiment, report in out["reports"].items():
                _print_report(experiment, report)
            for note in out["notes"]:
                print(f"note: {note}")
        elif args.command == "remove":
            out = remove(args.name, params_path, args.dry_run)
            print(
                f"{args.name}: removed (recipes, study.inits, study.checkpoints"
                f"{', ' + ', '.join(out['dropped']) if out['dropped'] else ''}); its run folders stay on disk"
            )
        else:
            import pandas as pd

            print(pd.DataFrame(rows(params_path)).to_markdown(index=False))
            return 0
        if args.dry_run:
            print(out["text"])
        else:
            print(f"{params_path}: written")
            _print_next(params_path, args.name)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
