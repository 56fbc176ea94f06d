#!/usr/bin/env python3
"""Print the Alembic revisions of this project as JSON, head first (docs/design/platform.md, "Schema").

    .venv/bin/python migrations/xorb_meta.py

    [{"revision": "8d9a2c3", "down_revision": "7c8f1b2", "message": "...",
      "release": "v2025.08-rc1", "destroys": [{"kind", "object", "description"}, ...],
      "has_downgrade": true, "path": "/.../versions/8d9a2c3_....py"}, ...]

`has_downgrade` is false when the module has no downgrade() or one that does nothing (only `pass`,
`...` or a docstring): a rollback through such a revision would "succeed" and leave the schema as
it was, so the tool refuses it before anything runs.

Reads the revision modules through Alembic's ScriptDirectory; connects to no database and needs no
DATABASE_URL. Exits 1 with one line on stderr when the project is inconsistent (several heads, a
revision without `xorb_release` or with a malformed `xorb_downgrade_destroys`).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"
DESTROY_KINDS = {"table", "column"}


class MetaError(Exception):
    pass


def destroys_of(revision: str, value: object) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise MetaError(f"revision {revision}: xorb_downgrade_destroys must be a list")
    out = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"kind", "object", "description"}:
            raise MetaError(
                f"revision {revision}: each xorb_downgrade_destroys entry needs exactly "
                "kind, object and description"
            )
        if not all(isinstance(v, str) and v for v in item.values()):
            raise MetaError(f"revision {revision}: xorb_downgrade_destroys values must be non-empty strings")
        if item["kind"] not in DESTROY_KINDS:
            raise MetaError(f"revision {revision}: unknown destroys kind {item['kind']!r}")
        out.append({"kind": item["kind"], "object": item["object"], "description": item["description"]})
    return out


def _does_nothing(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Pass):
        return True
    # A docstring or a bare `...`.
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and (
        isinstance(stmt.value.value, str) or stmt.value.value is Ellipsis
    )


def has_downgrade(revision: str, path: str) -> bool:
    """Whether the module at `path` defines a top-level downgrade() whose body does something.

    Read from the source rather than from the imported function: the question is what the file says,
    and a body of `pass` and a body that raises are told apart only there.
    """
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)
    except (OSError, SyntaxError) as e:
        raise MetaError(f"revision {revision}: cannot read {path}: {e}") from e
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "downgrade":
            return not all(_does_nothing(stmt) for stmt in node.body)
    return False


def revisions() -> list[dict[str, object]]:
    script = ScriptDirectory.from_config(Config(str(ALEMBIC_INI)))
    heads = script.get_heads()
    if len(heads) != 1:
        raise MetaError(f"expected one head revision, found {len(heads)}: {', '.join(sorted(heads))}")
    out = []
    # walk_revisions() goes from the head down to the base.
    for rev in script.walk_revisions():
        module = rev.module
        release = getattr(module, "xorb_release", None)
        if not isinstance(release, str) or not release:
            raise MetaError(f"revision {rev.revision}: xorb_release is not set")
        if not hasattr(module, "xorb_downgrade_destroys"):
            raise MetaError(f"revision {rev.revision}: xorb_downgrade_destroys is not set")
        down = rev.down_revision
        if isinstance(down, (tuple, list)):
            down = list(down)
        out.append(
            {
                "revision": rev.revision,
                "down_revision": down,
                "message": rev.doc,
                "release": release,
                "destroys": destroys_of(rev.revision, module.xorb_downgrade_destroys),
                "has_downgrade": has_downgrade(rev.revision, rev.path),
                "path": rev.path,
            }
        )
    return out


def main() -> int:
    try:
        data = revisions()
    except MetaError as e:
        print(f"xorb_meta: {e}", file=sys.stderr)
        return 1
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
