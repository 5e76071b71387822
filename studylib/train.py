"""`python -m studylib.train --params params.yaml --experiment NAME --out DIR [--set k=v ...] [--resume]`.

The same command under torchrun trains on many devices and nodes (DDP):

    torchrun --standalone --nproc-per-node=8 -m studylib.train --experiment mae --out results/mae

and `--launcher slurm` submits it as one SLURM job laid out by cluster.yaml (nodes x tasks, one DDP
process per task), waits, and exits with the run's status; logs and OUT/launch.json in OUT
(studylib.launch). Re-running the same command re-attaches to the job or resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import config, launch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m studylib.train", description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml", help="the study's params file")
    p.add_argument("--experiment", default="baseline", help="an experiments.NAME of the params file (or baseline)")
    p.add_argument("--out", required=True, help="output directory of the run")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set train.max_iters=10",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pth if present")
    p.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default=None,
        help="local: this process (under torchrun: one of its processes); slurm: one SLURM job "
        "(default: $STUDYLIB_LAUNCHER, else local)",
    )
    p.add_argument(
        "--cluster", metavar="YAML", help="SLURM options file (default: $STUDYLIB_CLUSTER, else ./cluster.yaml)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config.load(args.params, args.experiment, args.sets)
        chosen = launch.choose(args.launcher)
        if chosen == "slurm":
            options = launch.load_options(args.cluster)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if chosen == "slurm":
        from .launch import slurm

        try:
            metrics = slurm.train(args.params, args.experiment, args.out, args.sets, args.resume, options)
        except slurm.LaunchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    else:
        from .engine import run

        metrics = run(cfg, args.out, resume=args.resume)
    if metrics and os.environ.get("RANK", "0") == "0":
        keys = ("bbox/AP", "segm/AP", "train/time_s")
        print(json.dumps({k: metrics[k] for k in keys if k in metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
