"""The study's runs: the `study:` section of params.yaml, checked, and each run's name and config.

dvc.yaml expands the same lists into stages; the names below are the folders those stages write:

    runs/main/<init>-<size>-x<schedule>-s<seed>/   Table 1, Figure 2, Figure 4: the schedule sweep
                                                   (stages `main` and, random's longer schedules, `longer`)
    runs/main/<init>-<size>-e<epochs>-s<seed>/     Table 1's paired difference to random: more seeds at
                                                   study.paired.epochs (stage `paired`)
    runs/ablations/<name>/                         Tables 2-4 ({experiment, init, size, schedule, checkpoint})
    runs/pretrain_length/<name>/                   Figure 3 (MAE pre-trained for `steps` or a file, fine-tuned)
    runs/complexity/<experiment>.json              Table 5

A run's fine-tuning length is study.epochs[pretrained|random] x its schedule: the sweep runs every
initialization at every multiple of study.schedules (random also at study.random_schedules), so
Table 1 can take each initialization's best schedule (the paper's rule) and Figure 2 draws every
initialization on one grid.

    python -m studylib.report.study check [--params params.yaml] [--out FILE]   # the `check` stage
    python -m studylib.report.study plan [--params params.yaml] [--json]       # every run, what it feeds
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import config

FAMILIES = ("main", "paired", "ablations", "pretrain_lengths", "complexity")
STUDY_KEYS = (
    "inits",
    "sizes",
    "seeds",
    "epochs",
    "schedules",
    "random_schedules",
    "paired",
    "ablations",
    "pretrain_lengths",
    "complexity",
    "launch",
    "checkpoints",
    "pretrain",
)
RUN_DIRS = {
    "main": "runs/main",
    "paired": "runs/main",  # beside the sweep's runs (`-e<epochs>` in the name): the report reads one folder
    "ablations": "runs/ablations",
    "pretrain_lengths": "runs/pretrain_length",
    "complexity": "runs/complexity",
}
TABLES = ("table1", "figure2", "table2", "table3", "table4", "figure3", "figure4", "table5")
ABLATION_KEYS = ("experiment", "init", "size", "schedule", "checkpoint")
PRETRAIN_LENGTH_KEYS = ("steps", "checkpoint", "size", "schedule")
PRETRAIN_METHOD = {"supervised": "supervised", "mocov3": "mocov3", "beit": "beit", "mae": "mae"}
# which table an ablation feeds, by the keys its experiment changes from the baseline
ABLATION_TABLES = {
    "model.adaptor": "table2",
    "model.attention": "table3",
    "model.use_checkpoint": "table3",
    "init.abs_pos": "table4",
    "init.rel_pos": "table4",
}


@dataclass(frozen=True)
class Run:
    """One fine-tuning run of the study: where it goes and what it is."""

    family: str
    name: str
    experiment: str
    init: str
    seed: int | None = None
    epochs: float | None = None  # the resolved fine-tuning length (None: the experiment's own)
    size: str = "main"  # the size experiment (Table 1's model size) the run belongs to
    stage: str = ""  # its dvc.yaml stage family
    tables: tuple[str, ...] = ()
    checkpoint: str | None = None  # a file other than the init stage's (BEiT† of Table 4, Figure 3's files)
    tags: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def out_dir(self) -> str:
        return f"{RUN_DIRS[self.family]}/{self.name}"


def kind_of(init: str) -> str:
    """study.epochs' key for an initialization: random or pretrained."""
    return "random" if init == "random" else "pretrained"


def sweep_epochs(s: dict, init: str) -> dict[float, float]:
    """{schedule: epochs} of `init`'s sweep: study.epochs[kind] x each schedule (random: also its longer ones)."""
    scheds = list(s["schedules"]) + (list(s["random_schedules"] or []) if init == "random" else [])
    return {float(x): float(s["epochs"][kind_of(init)] * x) for x in scheds}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def study(params: str | Path | dict) -> dict:
    """The checked `study:` section (unknown or missing keys raise, naming them)."""
    p = config.read_params(params)
    s = p.get("study")
    if not isinstance(s, dict):
        raise ValueError("params: no 'study' section (see params.yaml: inits, sizes, seeds, epochs, ...)")
    for key in s:
        if key not in STUDY_KEYS:
            hint = "; Figure 2 is the schedule sweep now (study.schedules)" if key == "convergence" else ""
            raise ValueError(f"params: unknown key study.{key}; {config.closest(key, STUDY_KEYS)}{hint}")
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

    def seeds(values: Any, where: str) -> None:
        if not isinstance(values, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in values):
            raise ValueError(f"params: {where} = {values!r} must be a list of integers")

    inits(s["inits"], "study.inits")
    for size in s["sizes"]:
        experiment(size, "study.sizes")
    seeds(s["seeds"], "study.seeds")
    for k in ("pretrained", "random"):
        if not _number(s["epochs"].get(k)):
            raise ValueError(f"params: study.epochs.{k} = {s['epochs'].get(k)!r} must be a positive number")
    for k in ("schedules", "random_schedules"):
        v = s[k] or []
        if not isinstance(v, list) or not all(_number(x) for x in v) or len(set(v)) != len(v):
            raise ValueError(f"params: study.{k} = {s[k]!r} must be a list of distinct positive multiples")
    if not s["schedules"]:
        raise ValueError("params: study.schedules is empty: Table 1 needs at least one schedule")
    _check_paired(s, inits, seeds)
    _check_items(s, experiment, inits)
    for name in [*s["complexity"]["experiments"], *(s["complexity"].get("weights") or {})]:
        experiment(name, "study.complexity")
    _check_checkpoints(s, known)
    for kind in s["pretrain"]:
        if kind != "all" and kind not in PRETRAIN_METHOD:
            raise ValueError(f"params: study.pretrain.{kind}; {config.closest(kind, ['all', *PRETRAIN_METHOD])}")
    return s


def _check_paired(s: dict, inits, seeds) -> None:
    """study.paired: {epochs: E, inits: [...], seeds: [...]}; E is a length of every init's sweep."""
    pr = s["paired"]
    if not isinstance(pr, dict) or set(pr) != {"epochs", "inits", "seeds"}:
        raise ValueError(f"params: study.paired = {pr!r}: expected {{epochs: E, inits: [...], seeds: [...]}}")
    inits(pr["inits"], "study.paired.inits")
    seeds(pr["seeds"], "study.paired.seeds")
    both = sorted(set(pr["seeds"]) & set(s["seeds"]))
    if both:
        raise ValueError(f"params: study.paired.seeds {both} are in study.seeds already (the sweep runs them)")
    for init in s["inits"]:
        if float(pr["epochs"]) not in sweep_epochs(s, init).values():
            raise ValueError(
                f"params: study.paired.epochs = {pr['epochs']!r} is not a length of {init}'s sweep "
                f"({sorted(sweep_epochs(s, init).values())} epochs): Table 1 compares every init to random there"
            )
    missing = [i for i in pr["inits"] if i not in s["inits"]]
    if missing:
        raise ValueError(f"params: study.paired.inits has {missing[0]!r}, which study.inits lacks")


def _check_items(s: dict, experiment, inits) -> None:
    """study.ablations and study.pretrain_lengths: every key present; their default row is a sweep run."""
    for family, keys in (("ablations", ABLATION_KEYS), ("pretrain_lengths", PRETRAIN_LENGTH_KEYS)):
        for name, item in (s[family] or {}).items():
            if not isinstance(item, dict) or set(item) != set(keys):
                raise ValueError(f"params: study.{family}.{name} = {item!r}: expected the keys {', '.join(keys)}")
            if item["size"] not in s["sizes"]:
                raise ValueError(
                    f"params: study.{family}.{name}.size = {item['size']!r} is not one of study.sizes "
                    f"({', '.join(s['sizes'])}): its default row is that size's sweep run"
                )
            if family == "pretrain_lengths" and float(item["schedule"]) not in map(float, s["schedules"]):
                raise ValueError(
                    f"params: study.{family}.{name}.schedule = {item['schedule']!r} is not one of "
                    f"study.schedules {s['schedules']}: its default row is the sweep run at that schedule"
                )
            if not isinstance(item["checkpoint"], str):
                raise ValueError(f"params: study.{family}.{name}.checkpoint must be '' or a file")
            if family == "ablations":
                experiment(item["experiment"], f"study.ablations.{name}.experiment")
                inits([item["init"]], f"study.ablations.{name}.init")
                if item["init"] not in s["inits"]:
                    raise ValueError(f"params: study.ablations.{name}.init = {item['init']!r}: not in study.inits")
            elif not isinstance(item["steps"], int) or item["steps"] < 1:
                raise ValueError(f"params: study.pretrain_lengths.{name}.steps = {item['steps']!r}: an int >= 1")
        if family == "pretrain_lengths" and s[family] and "mae" not in s["inits"]:
            raise ValueError("params: study.pretrain_lengths needs mae in study.inits (its full-length point)")


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
    p = config.read_params(params)
    s = study(p)
    out: dict[str, list[Run]] = {f: [] for f in FAMILIES if f != "complexity"}
    for size in s["sizes"]:
        for init in s["inits"]:
            for raw in [*s["schedules"], *((s["random_schedules"] or []) if init == "random" else [])]:
                stage = "main" if raw in s["schedules"] else "longer"
                for seed in s["seeds"]:
                    name = f"{init}-{size}-x{raw}-s{seed}"
                    epochs = float(s["epochs"][kind_of(init)] * raw)
                    tables = ("table1", "figure2", "figure4")
                    out["main"].append(Run("main", name, size, init, seed, epochs, size, stage, tables))
        pr = s["paired"]
        for init in pr["inits"]:
            for seed in pr["seeds"]:
                name = f"{init}-{size}-e{pr['epochs']}-s{seed}"
                out["paired"].append(
                    Run("paired", name, size, init, seed, float(pr["epochs"]), size, "paired", ("table1",))
                )
    first = s["seeds"][0] if s["seeds"] else None
    for name, it in (s["ablations"] or {}).items():
        exp = f"{it['size']}+{it['experiment']}"
        epochs = float(s["epochs"][kind_of(it["init"])] * it["schedule"])
        tables = ablation_tables(p, exp)
        ck = it["checkpoint"] or None
        out["ablations"].append(
            Run("ablations", name, exp, it["init"], first, epochs, it["size"], "ablation", tables, ck)
        )
    for name, it in (s["pretrain_lengths"] or {}).items():
        epochs = float(s["epochs"]["pretrained"] * it["schedule"])
        run = Run(
            "pretrain_lengths",
            name,
            it["size"],
            "mae",
            first,
            epochs,
            it["size"],
            "pretrain_length",
            ("figure3",),
            it["checkpoint"] or None,
            tags={"steps": it["steps"]},
        )
        out["pretrain_lengths"].append(run)
    return out


def ablation_tables(params: str | Path | dict, experiment: str) -> tuple[str, ...]:
    """The tables an ablation feeds: by the keys its experiment changes (a ResNet: Table 5's from-scratch CNN)."""
    base, exp = config.load(params, "baseline").flat(), config.load(params, experiment).flat()
    tables = {t for k, t in ABLATION_TABLES.items() if exp[k] != base[k]}
    if exp["model.backbone"] != base["model.backbone"] and exp["model.backbone"].startswith("resnet"):
        tables.add("table5")
    return tuple(t for t in TABLES if t in tables)


def sweep_run(params: str | Path | dict, init: str, size: str, epochs: float, seed: int | None = None) -> Run:
    """The sweep run of `init` at `size` and `epochs` (the first seed by default): an ablation's default row."""
    s = study(params)
    seed = s["seeds"][0] if seed is None else seed
    for r in runs(params)["main"]:
        if (r.init, r.size, r.epochs, r.seed) == (init, size, float(epochs), seed):
            return r
    raise ValueError(f"the sweep has no run of {init} at {size}, {epochs:g} epochs, seed {seed}")


def reference_run(params: str | Path | dict, init: str, size: str | None = None) -> Run:
    """The run that stands for `init` in curves and pictures: its sweep run at study.paired.epochs (a length
    every init has), first seed."""
    s = study(params)
    return sweep_run(params, init, size or s["sizes"][0], s["paired"]["epochs"])


def plan(params: str | Path | dict) -> list[dict[str, Any]]:
    """One row per run the params make: stage, tables it feeds, experiment, backbone, init, epochs, seed."""
    rows = []
    for items in runs(params).values():
        for r in items:
            row = {k: v for k, v in asdict(r).items() if k in ("stage", "experiment", "init", "epochs", "seed")}
            rows.append(
                {
                    **row,
                    "tables": list(r.tables),
                    "backbone": config.load(params, r.experiment).model.backbone,
                    "size": r.size,
                    "run": r.out_dir,
                    "checkpoint": r.checkpoint,
                }
            )
    s = study(params)
    weights = s["complexity"].get("weights") or {}
    trained = {r["run"]: r for r in rows}
    for name in [*weights, *s["complexity"]["experiments"]]:
        cfg, w = config.load(params, name), trained.get(weights.get(name), {})
        rows.append(
            {
                "stage": "complexity",
                "experiment": name,
                "init": w.get("init", "untrained"),
                "epochs": w.get("epochs"),
                "seed": w.get("seed"),
                "tables": ["table5"],
                "backbone": cfg.model.backbone,
                "size": None,
                "run": f"{RUN_DIRS['complexity']}/{name}.json",
                "checkpoint": weights.get(name),
            }
        )
    return rows


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
    epochs: float | None = None,
) -> list[str]:
    """`--set` strings making a run of `experiment`; each argument left None (or "") keeps the experiment's own.

    init: init.kind (and a user init's format: `init_sets`), and init.checkpoint = the init stage's file for the
    experiment's size (unless `checkpoint`); schedule: train.epochs = study.epochs[pretrained|random] x schedule
    (the sweep's runs); epochs: train.epochs itself (wins over schedule); seed: train.seed.
    """
    s = study(params)
    kind = init or config.load(params, experiment).init.kind
    if init:
        sets = init_sets(params, init, checkpoint or init_checkpoint(params, init, experiment))
    else:
        sets = [f"init.checkpoint={checkpoint}"] if checkpoint else []
    if epochs is not None:
        sets.append(f"train.epochs={float(epochs)}")
    elif schedule is not None:
        sets.append(f"train.epochs={float(s['epochs'][kind_of(kind)] * schedule)}")
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
    plan_runs = runs(params)
    for items in plan_runs.values():
        for r in items:
            config.load(
                params, r.experiment, run_sets(params, r.init, r.experiment, r.seed, None, r.checkpoint, r.epochs)
            )
    for r in plan_runs["ablations"] + plan_runs["pretrain_lengths"]:
        if {"table2", "table3", "table4", "figure3"} & set(r.tables):  # their default row: a sweep run
            try:
                sweep_run(params, r.init, r.size, r.epochs)
            except ValueError as e:
                raise ValueError(f"params: study.{r.family}.{r.name}: {e} (its default row)") from None
    _check_complexity(s, params, plan_runs)
    from .. import inits  # the files of the user's own initializations: present, of the model's width and patch

    files = inits.check_files(params)
    return {"user_inits": len(files), "experiments": len(checked), "runs": sum(len(v) for v in plan_runs.values())}


def _check_complexity(s: dict, params: str | Path | dict, plan_runs: dict[str, list[Run]]) -> None:
    """study.complexity: weights = {experiment: a trained run of the study} (counted trained, the paper's Table 5);
    experiments = more experiments counted with random weights (params and FLOPs of sizes the study does not train)."""
    c = s["complexity"]
    extra = set(c) - {"experiments", "weights", "images", "fps_images"}
    if extra:
        raise ValueError(f"params: unknown key study.complexity.{sorted(extra)[0]}")
    folders = {r.out_dir: r for items in plan_runs.values() for r in items}
    for name, folder in (c.get("weights") or {}).items():
        if name in c["experiments"]:
            raise ValueError(
                f"params: study.complexity.experiments has {name!r}, which study.complexity.weights counts trained"
            )
        if folder not in folders:
            raise ValueError(
                f"params: study.complexity.weights.{name} = {folder!r} is not a run of the study; "
                f"{config.closest(folder, folders)}"
            )
        want, got = config.load(params, name).model.backbone, config.load(params, folders[folder].experiment)
        if got.model.backbone != want:
            raise ValueError(
                f"params: study.complexity.weights.{name} = {folder}: a {got.model.backbone} run, "
                f"but experiment {name} counts {want}"
            )


def plan_table(rows: list[dict[str, Any]]) -> str:
    """The plan as a markdown table (the README shows the paper's and the embedded one)."""
    import pandas as pd

    cols = ["stage", "tables", "experiment", "backbone", "init", "epochs", "seed"]
    shown = [
        {
            **r,
            "tables": " ".join(r["tables"]),
            "epochs": "–" if r["epochs"] is None else f"{r['epochs']:g}",
            "seed": "–" if r["seed"] is None else str(r["seed"]),
        }
        for r in rows
    ]
    df = pd.DataFrame(shown, columns=cols)
    return df.to_markdown(index=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m studylib.report.study", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["check", "plan", "list"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", help="check: write 'ok' here when everything is valid (the check stage's output)")
    ap.add_argument("--json", action="store_true", help='plan: print {"runs": [...]} as JSON')
    args = ap.parse_args(argv)
    try:
        if args.command == "check":
            summary = check(args.params)
            print(f"{args.params}: {summary['experiments']} experiments and {summary['runs']} study runs are valid")
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text("ok\n")  # constant: editing params re-runs only the stages that read them
        elif args.command == "plan":
            rows = plan(args.params)
            print(json.dumps({"runs": rows}, indent=1) if args.json else plan_table(rows))
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
