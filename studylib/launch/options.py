"""The cluster options of `--launcher slurm`: cluster.yaml's `slurm:` section, checked once.

Looked up in this order: an explicit path (`--cluster PATH`), the file named by STUDYLIB_CLUSTER,
cluster.yaml in the current folder, else the defaults below. Not a DVC param: where a run
executes is not part of what it computes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_CLUSTER = "STUDYLIB_CLUSTER"
DEFAULT_FILE = "cluster.yaml"


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 2
    mem_gb: float | None = None
    time_min: int = 60
    max_timeouts: int = 3
    signal_delay_s: int = 120
    sbatch: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    poll_s: float = 10.0

    @property
    def ntasks_per_node(self) -> int:
        """One process per GPU; on CPU nodes `tasks_per_node` (gloo)."""
        return self.gpus_per_node if self.gpus_per_node > 0 else self.tasks_per_node

    @property
    def tasks(self) -> int:
        return self.nodes * self.ntasks_per_node

    def replace(self, **changes: Any) -> "SlurmOptions":
        return dataclasses.replace(self, **changes)


_POSITIVE = ("nodes", "tasks_per_node", "cpus_per_task", "time_min")
_NON_NEGATIVE = ("gpus_per_node", "max_timeouts", "signal_delay_s")


def cluster_file(path: str | Path | None = None) -> Path | None:
    """The options file in use (None: built-in defaults)."""
    if path:
        return Path(path)
    if os.environ.get(ENV_CLUSTER):
        return Path(os.environ[ENV_CLUSTER])
    return Path(DEFAULT_FILE) if Path(DEFAULT_FILE).is_file() else None


def load(path: str | Path | None = None) -> SlurmOptions:
    """The `slurm:` section of the options file, every key and value checked (errors name file and key)."""
    import yaml

    src = cluster_file(path)
    if src is None:
        return SlurmOptions()
    if not src.is_file():
        raise ValueError(f"cluster options file {src} does not exist")
    data = yaml.safe_load(src.read_text()) or {}
    section = data.get("slurm") or {}
    if not isinstance(section, dict):
        raise ValueError(f"{src}: `slurm:` must be a mapping of options")
    known = {f.name for f in dataclasses.fields(SlurmOptions)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"{src}: unknown slurm option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    for key in _POSITIVE + _NON_NEGATIVE:
        value = section.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < (1 if key in _POSITIVE else 0)
        ):
            raise ValueError(f"{src}: slurm.{key} = {value!r} must be an integer >= {1 if key in _POSITIVE else 0}")
    if not isinstance(section.get("sbatch", {}), dict):
        raise ValueError(f"{src}: slurm.sbatch must be a mapping of sbatch flags (without the leading --)")
    if not isinstance(section.get("setup", []), list):
        raise ValueError(f"{src}: slurm.setup must be a list of shell lines")
    return SlurmOptions(**{k: v for k, v in section.items() if v is not None})
