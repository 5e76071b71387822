"""Atomic writes: a result file is either the old one or the complete new one, never half written."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _atomic(path: str | Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    import torch

    return _atomic(path, lambda f: torch.save(obj, f))


def project_root(start: str | Path | None = None) -> Path:
    """The study's root folder (the DVC project holding params.yaml): `start` (default: the working folder)
    or the nearest parent. Jupyter Server starts a notebook's kernel in the notebook's own folder
    (`notebooks/`), DVC and papermill at the root: notebooks `os.chdir` here first, so params, data,
    runs and results resolve against the root wherever the kernel started."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    start = Path(start or Path.cwd()).resolve()
    try:
        root = Path(Repo.find_root(str(start)))
    except NotDvcRepoError:
        raise ValueError(
            f"{start}: neither it nor a parent folder is the study's root (a DVC project, .dvc/)"
        ) from None
    if not (root / "params.yaml").is_file():
        raise ValueError(f"{root}: the DVC project holds no params.yaml (the study's root has one)")
    return root
