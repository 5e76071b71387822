"""The study's runs: the `study:` section of params.yaml, checked, and each run's name and config.

dvc.yaml expands the same lists into stages; the names below are the folders those stages write:

    runs/main/<init>-<size>-s<seed>/         Table 1 (and TIDE, Figure 4), `size` an experiment name
    runs/convergence/<name>/                 Figure 2 ({init, schedule} per name; `schedule` multiplies study.epochs)
    runs/ablations/<name>/                   Tables 2-4 ({experiment, init} per name)
    runs/pretrain_length/<name>/             Figure 3 (MAE pre-trained for `steps`, then fine-tuned as main)
    runs/complexity/<experiment>.json        Table 5

`python -m studylib.report.study check [--params params.yaml] [--out FILE]` validates every
experiment and every study run before any work starts (the `check` stage of dvc.yaml).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import config

FAMILIES = ("main", "convergence", "ablations", "pretrain_lengths", "complexity")
STUDY_KEYS = (
    "inits",
    "sizes",
    "seeds",
    "epochs",
    "convergence",
    "ablations",
    "pretrain_lengths",
    "complexity",
    "launch",
    "checkpoints",
    "pretrain",
)
RUN_DIRS = {
    "main": "runs/main",
    "convergence": "runs/convergence",
    "ablations": "runs/ablations",
    "pretrain_lengths": "runs/pretrain_length",
    "complexity": "runs/complexity",
}
PRETRAIN_METHOD = {"supervised": "supervised", "mocov3": "mocov3", "beit": "beit", "mae": "mae"}


@dataclass(frozen=True)
class Run:
    """One fine-tuning run of the study: where it goes and what it is."""

    family: str
    name: str
    experiment: str
    init: str
    seed: int | None = None
    schedule: float = 1.0
    tags: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def out_dir(self) -> str:
        return f"{RUN_DIRS[self.family]}/{self.name}"


def study(params: str | Path | dict) -> dict:
    """The checked `study:` section (unknown or missing keys raise, naming them)."""
    p = config.read_params(params)
    s = p.get("study")
    if not isinstance(s, dict):
        raise ValueError("params: no 'study' section (see params.yaml: inits, sizes, seeds, epochs, ...)")
    for key in s:
        if key not in STUDY_KEYS:
            raise ValueError(f"params: unknown key study.{key}; {config.closest(key, STUDY_KEYS)}")
    missing = [k for k in STUDY_KEYS if k not in s]
    if missing:
        raise ValueError(f"params: study.{', study.'.join(missing)} missing")
    experiments = ["baseline", *config.experiment_names(p)]

    known = config.init_names(p)

    def inits(values: list, where: str) -> None:
        for v in values:
            if v not in known:
                raise ValueError(f"params: {where} has {v!r}; {config.closest(v, known)}")

    def experiment(name: str, where: str) -> None:
        if name not in experiments:
            raise ValueError(f"params: {where} = {name!r} is not an experiment; {config.closest(name, experiments)}")

    inits(s["inits"], "study.inits")
    for size in s["sizes"]:
        experiment(size, "study.sizes")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in s["seeds"]):
        raise ValueError(f"params: study.seeds = {s['seeds']!r} must be a list of integers")
    for k in ("pretrained", "random"):
        if not isinstance(s["epochs"].get(k), (int, float)) or s["epochs"][k] <= 0:
            raise ValueError(f"params: study.epochs.{k} = {s['epochs'].get(k)!r} must be a positive number")
    for name, item in (s["convergence"] or {}).items():
        if (
            not isinstance(item, dict)
            or set(item) != {"init", "schedule"}
            or not isinstance(item["schedule"], (int, float))
            or isinstance(item["schedule"], bool)
            or item["schedule"] <= 0
        ):
            raise ValueError(
                f"params: study.convergence.{name} = {item!r}: expected {{init: <init>, "
                f"schedule: a positive multiple of study.epochs}}"
            )
        inits([item["init"]], f"study.convergence.{name}.init")
    for name, item in (s["ablations"] or {}).items():
        if set(item) != {"experiment", "init"}:
            raise ValueError(f"params: study.ablations.{name} must have exactly the keys experiment, init")
        experiment(item["experiment"], f"study.ablations.{name}.experiment")
        inits([item["init"]], f"study.ablations.{name}.init")
    for name, item in (s["pretrain_lengths"] or {}).items():
        if set(item) != {"steps", "checkpoint"} or not isinstance(item["steps"], int) or item["steps"] < 1:
            raise ValueError(
                f"params: study.pretrain_lengths.{name} = {item!r}: expected {{steps: int >= 1, "
                f"checkpoint: '' or a file}}"
            )
    for name in s["complexity"]["experiments"]:
        experiment(name, "study.complexity.experiments")
    _check_checkpoints(s, known)
    for kind in s["pretrain"]:
        if kind != "all" and kind not in PRETRAIN_METHOD:
            raise ValueError(f"params: study.pretrain.{kind}; {config.closest(kind, ['all', *PRETRAIN_METHOD])}")
    return s


def _check_checkpoints(s: dict, known: list[str]) -> None:
    """study.checkpoints: an entry per init of study.inits (each init stage reads its own); user inits need a file."""
    ckpts = s["checkpoints"] or {}
    for kind, entry in ckpts.items():
        if kind not in known:
            raise ValueError(f"params: study.checkpoints.{kind}; {config.closest(kind, known)}")
        if kind == "random" and entry is not None:
            raise ValueError(f"params: study.checkpoints.random = {entry!r}: random takes no file (null)")
        release_entry(entry, f"study.checkpoints.{kind}")
    missing = [i for i in s["inits"] if i not in ckpts]
    if missing:
        raise ValueError(
            f"params: study.checkpoints.{', study.checkpoints.'.join(missing)} missing: every init of "
            f"study.inits has an entry (null: pre-trained locally, or none for random)"
        )
    user = [i for i in known if i not in config.INITS]
    for kind in user:
        if kind not in s["inits"]:
            raise ValueError(
                f"params: recipes.{kind} defines an initialization that study.inits lacks: add it to "
                f"study.inits or take it out (python -m studylib.inits remove {kind})"
            )
        if not release_entry(ckpts[kind], f"study.checkpoints.{kind}")[0]:
            raise ValueError(
                f"params: study.checkpoints.{kind} is null: {kind!r} is not one of the paper's "
                f"initializations, so it has no local pre-training; name its file"
            )


def release_entry(entry: Any, where: str) -> tuple[str | dict[str, str] | None, str | None]:
    """(file or {size experiment: file} or None, format or None) of a study.checkpoints entry:
    null | FILE | {size: FILE} | {file: FILE or {size: FILE}, format: F}."""
    fmt = None
    if isinstance(entry, dict) and "file" in entry:
        if set(entry) - {"file", "format"}:
            raise ValueError(f"params: {where} = {entry!r}: expected the keys file, format")
        entry, fmt = entry["file"], entry.get("format")
        formats = config.vocabularies()["init.format"]
        if fmt is not None and fmt not in formats:
            raise ValueError(f"params: {where}.format = {fmt!r}; {config.closest(fmt, formats)}")
    ok = (
        entry is None
        or (isinstance(entry, str) and entry)
        or (isinstance(entry, dict) and entry and all(isinstance(v, str) and v for v in entry.values()))
    )
    if not ok:
        raise ValueError(
            f"params: {where} = {entry!r}: expected null, a file, {{size experiment: file}} "
            f"or {{file: ..., format: ...}}"
        )
    return entry, fmt


def runs(params: str | Path | dict) -> dict[str, list[Run]]:
    """Every fine-tuning run the study expects, by family (the same names dvc.yaml templates)."""
    s = study(params)
    out: dict[str, list[Run]] = {f: [] for f in FAMILIES if f != "complexity"}
    for init in s["inits"]:
        for size in s["sizes"]:
            for seed in s["seeds"]:
                out["main"].append(Run("main", f"{init}-{size}-s{seed}", size, init, seed, tags={"size": size}))
    for name, item in (s["convergence"] or {}).items():
        out["convergence"].append(Run("convergence", name, "main", item["init"], None, float(item["schedule"])))
    for name, item in (s["ablations"] or {}).items():
        out["ablations"].append(Run("ablations", name, item["experiment"], item["init"]))
    for name, item in (s["pretrain_lengths"] or {}).items():
        out["pretrain_lengths"].append(Run("pretrain_lengths", name, "main", "mae", tags={"steps": item["steps"]}))
    return out


def is_default_size(params: str | Path | dict, experiment: str) -> bool:
    """Whether `experiment` fine-tunes the scale's own backbone (the one inits/<kind>/checkpoint.pth is for)."""
    return config.load(params, experiment).model.backbone == config.load(params, "baseline").model.backbone


def init_checkpoint(params: str | Path | dict, kind: str, experiment: str) -> str | None:
    """The file the init stage provides for `kind` at the model size of `experiment` (None for random)."""
    if kind == "random":
        return None
    backbone = config.load(params, experiment).model.backbone
    if is_default_size(params, experiment):
        return f"inits/{kind}/checkpoint.pth"
    return f"inits/{kind}/{backbone}/checkpoint.pth"


def init_sets(params: str | Path | dict, init: str, checkpoint: str | Path | None = None) -> list[str]:
    """`--set` strings of an initialization: init.kind, its file (pre-trained inits) and its format, if named."""
    known = config.init_names(params)
    if init not in known:
        raise ValueError(f"init = {init!r}; {config.closest(init, known)}")
    sets = [f"init.kind={init}"]
    if checkpoint and init != "random":
        sets.append(f"init.checkpoint={checkpoint}")
    fmt = release_entry(study(params)["checkpoints"].get(init), f"study.checkpoints.{init}")[1]
    if fmt:
        sets.append(f"init.format={fmt}")
    return sets


def run_sets(
    params: str | Path | dict,
    init: str | None,
    experiment: str = "main",
    seed: int | None = None,
    schedule: float | None = 1.0,
    checkpoint: str | None = None,
) -> list[str]:
    """`--set` strings making a run of `experiment`; each argument left None (or "") keeps the experiment's own.

    init: init.kind (and a user init's format: `init_sets`), and init.checkpoint = the init stage's file for the
    experiment's size (unless `checkpoint`); schedule: train.epochs = study.epochs[pretrained|random] x schedule
    (the study's runs); seed: train.seed; checkpoint: init.checkpoint.
    """
    s = study(params)
    kind = init or config.load(params, experiment).init.kind
    if init:
        sets = init_sets(params, init, checkpoint or init_checkpoint(params, init, experiment))
    else:
        sets = [f"init.checkpoint={checkpoint}"] if checkpoint else []
    if schedule is not None:
        sets.append(f"train.epochs={s['epochs']['random' if kind == 'random' else 'pretrained'] * schedule}")
    if seed is not None:
        sets.append(f"train.seed={seed}")
    return sets


def release_files(params: str | Path | dict, kind: str) -> dict[str, str]:
    """study.checkpoints[kind] as {backbone: file} (a plain string is the scale's own backbone)."""
    entry = release_entry(study(params)["checkpoints"].get(kind), f"study.checkpoints.{kind}")[0]
    if not entry:
        return {}
    default = config.load(params, "baseline").model.backbone
    if isinstance(entry, str):
        return {default: entry}
    return {config.load(params, exp).model.backbone: path for exp, path in entry.items()}


def check(params: str | Path | dict) -> dict[str, Any]:
    """Load every experiment with every init and every study run's config; raise on the first fault."""
    s = study(params)
    checked = []
    for name in ["baseline", *config.experiment_names(params)]:
        config.load(params, name)
        checked.append(name)
    for items in runs(params).values():
        for run in items:
            config.load(params, run.experiment, run_sets(params, run.init, run.experiment, run.seed, run.schedule))
    for name in s["complexity"]["experiments"]:
        config.load(params, name)
    from .. import inits  # the files of the user's own initializations: present, of the model's width and patch

    files = inits.check_files(params)
    return {"user_inits": len(files), "experiments": len(checked), "runs": sum(len(v) for v in runs(params).values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m studylib.report.study", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["check", "list"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", help="check: write 'ok' here when everything is valid (the check stage's output)")
    args = ap.parse_args(argv)
    try:
        if args.command == "check":
            summary = check(args.params)
            print(f"{args.params}: {summary['experiments']} experiments and {summary['runs']} study runs are valid")
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text("ok\n")  # constant: editing params re-runs only the stages that read them
        else:
            for family, items in runs(args.params).items():
                for run in items:
                    print(f"{family}\t{run.out_dir}\t{run.experiment}\t{run.init}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
