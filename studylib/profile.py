"""Profiles: named edits of params.yaml that switch the whole study at once (`profiles/NAME.yaml`).

    python -m studylib.profile paper      # the paper's scale and study lists (COCO, ViT-B/L, GPUs)
    python -m studylib.profile micro      # the CI-sized DAG: tiny data, a handful of iterations
    python -m studylib.profile micro --params other.yaml --dry-run

A profile maps dotted keys of params.yaml to new values (`scale: paper`, `study.seeds: [0]`); each
value replaces the old one whole, the way `dvc exp run -S key=value` does. Keys must already exist
(a misspelt key is an error naming the closest ones); comments and layout of params.yaml are kept
(ruamel.yaml round trip). The result is validated (`studylib.report.study.check`) before it is written.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from .config import closest

PROFILES = Path("profiles")  # relative to the repository root, where dvc and papermill run


def _yaml() -> YAML:
    y = YAML()  # round trip: comments, key order and flow style survive
    y.preserve_quotes = True
    y.width = 4096  # never wrap a line
    y.indent(mapping=2, sequence=4, offset=2)
    y.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def available(profiles_dir: Path = PROFILES) -> list[str]:
    return sorted(p.stem for p in profiles_dir.glob("*.yaml"))


def read_profile(name: str, profiles_dir: Path = PROFILES) -> dict[str, Any]:
    path = profiles_dir / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown profile {name!r}; {closest(name, available(profiles_dir))}")
    data = _yaml().load(path.read_text())  # round trip: the profile's flow style is kept in params.yaml
    if not isinstance(data, dict) or not data:
        raise ValueError(f"profile {path}: expected a mapping of dotted params keys to values")
    return data


def _carry_comments(old: Any, new: Any) -> None:
    """Keep params.yaml's layout (block or flow) and its comments on the keys a replacing mapping still has."""
    if isinstance(old, CommentedMap) and isinstance(new, CommentedMap):
        if old.fa.flow_style():
            new.fa.set_flow_style()
            return
        new.fa.set_block_style()
        for key in new:
            if key in old.ca.items and key not in new.ca.items:
                new.ca.items[key] = old.ca.items[key]
            if key in old:
                _carry_comments(old[key], new[key])


def set_key(params: CommentedMap, dotted: str, value: Any, where: str) -> None:
    """params[a][b][c] = value for dotted 'a.b.c'; every key on the way must exist."""
    node, parts = params, dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            allowed = list(node) if isinstance(node, dict) else []
            raise ValueError(
                f"{where}: key {dotted!r}: {'.'.join(parts[: i + 1])!r} is not in params; {closest(part, allowed)}"
            )
        if i == len(parts) - 1:
            _carry_comments(node[part], value)
            node[part] = value
        else:
            node = node[part]


def apply(
    name: str, params_path: str | Path = "params.yaml", profiles_dir: Path = PROFILES, dry_run: bool = False
) -> str:
    """Apply profiles/NAME.yaml to `params_path`; returns the new text (written unless dry_run)."""
    from .io import atomic_write_text
    from .report.study import check

    params_path = Path(params_path)
    y = _yaml()
    params = y.load(params_path.read_text())
    where = str(profiles_dir / f"{name}.yaml")
    for key, value in read_profile(name, profiles_dir).items():
        set_key(params, str(key), value, where)
    buf = io.StringIO()
    y.dump(params, buf)
    text = buf.getvalue()
    check(YAML(typ="safe").load(text))  # an invalid result is never written
    if not dry_run:
        atomic_write_text(params_path, text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m studylib.profile", description=__doc__.splitlines()[0])
    ap.add_argument("name", help=f"a profile under profiles/ ({', '.join(available()) or 'none'})")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profiles-dir", type=Path, default=PROFILES)
    ap.add_argument("--dry-run", action="store_true", help="print the new params instead of writing them")
    args = ap.parse_args(argv)
    try:
        text = apply(args.name, args.params, args.profiles_dir, args.dry_run)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text if args.dry_run else f"{args.params}: applied profile {args.name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
