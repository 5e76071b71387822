"""Write the study plans into the README: the embedded default's and the paper profile's runs, one row each.

    python tools/plan_readme.py [--readme README.md] [--check]

Each plan is `python -m studylib.report.study plan` of a params file (params.yaml as it is; a copy with
`profiles/paper.yaml` applied), placed between `<!-- plan:NAME:begin -->` and `<!-- plan:NAME:end -->`.
`--check` writes nothing and exits 1 when the README's plans are not the params' (tests/test_report.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from studylib import profile  # noqa: E402
from studylib.report import study  # noqa: E402


def plans(root: Path = ROOT) -> dict[str, str]:
    """{"embedded": markdown table, "paper": markdown table} from root's params.yaml and profiles/."""
    out = {"embedded": study.plan_table(study.plan(root / "params.yaml"))}
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(root / "params.yaml", Path(tmp) / "params.yaml")
        profile.apply("paper", Path(tmp) / "params.yaml", root / "profiles")
        out["paper"] = study.plan_table(study.plan(Path(tmp) / "params.yaml"))
    return out


def render(text: str, tables: dict[str, str]) -> str:
    for name, table in tables.items():
        begin, end = f"<!-- plan:{name}:begin -->", f"<!-- plan:{name}:end -->"
        if begin not in text or end not in text:
            raise ValueError(f"README: markers {begin} ... {end} missing")
        head, rest = text.split(begin, 1)
        text = f"{head}{begin}\n{table}\n{end}{rest.split(end, 1)[1]}"
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--check", action="store_true", help="exit 1 if the README's plans are stale; write nothing")
    a = ap.parse_args()
    readme = Path(a.readme)
    text = readme.read_text()
    new = render(text, plans())
    if a.check:
        if new != text:
            print(f"{readme}: the study plans are stale; run python tools/plan_readme.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    print(f"{readme}: plans written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
