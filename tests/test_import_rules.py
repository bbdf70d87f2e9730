"""The package rule (docs/contributing.md): a stage imports `hdr` and its own package only; `hdr` imports no stage."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("render", "augment", "caption", "manifests", "train", "evaluate")


def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def test_no_stage_imports_another_stage_and_hdr_imports_none():
    bad = []
    for pkg in STAGES + ("hdr",):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for line, top in _imports(path):
                if top in STAGES and top != pkg:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    assert not bad, "\n".join(bad)
