"""papermill's command line, reading a notebook's jupytext script directly: what DVC's stages run.

    python -m studylib.notebook [PAPERMILL OPTIONS] notebooks/NAME.py OUT.ipynb [-p NAME VALUE ...]

The same as `jupytext --to ipynb -o - notebooks/NAME.py | papermill - OUT.ipynb ...` (the script, paired
with notebooks/NAME.ipynb, is the reviewed source and each stage's dependency), in one process instead of
two: every Python process that imports nbformat pays for its JSON-schema format checkers, and a study of
~55 stages paid it twice per stage. Of that, 1.3 s of CPU per process is `rfc3987_syntax` building Lark
grammars at import (python-jsonschema/jsonschema#1428) for the "iri" formats, which no nbformat schema
uses: this process marks the package absent, and jsonschema, which imports it under
`suppress(ImportError)`, leaves those two checkers out. An input that is not a `.py` file goes to papermill
as given. Every option is papermill's own (its click command parses them), so `--help` is papermill's.
"""

from __future__ import annotations

import io
import sys

sys.modules.setdefault("rfc3987_syntax", None)  # before jupytext / papermill import nbformat (see above)

import click  # noqa: E402
import jupytext  # noqa: E402
from papermill.cli import papermill  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:  # as click's standalone mode: usage errors and --help print and exit with click's code
        ctx = papermill.make_context("python -m studylib.notebook", args)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    script = ctx.params.get("notebook_path") or ""
    if script.endswith(".py"):  # papermill reads "-" from stdin, as at the end of the pipe above
        sys.stdin = io.StringIO(jupytext.writes(jupytext.read(script), fmt="ipynb"))
        ctx.params["notebook_path"] = "-"
    with ctx:
        papermill.invoke(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
