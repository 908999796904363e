"""The one rule between the parts: gpt/ never imports api/ or worker/; api/ never imports torch or worker/."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.harness import ROOT


def test_api_never_imports_torch_or_worker() -> None:
    code = (
        "import sys, api.main, api.cli, api.migrate\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'worker', 'numpy'))\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def _imported_roots(path) -> set[str]:  # type: ignore[no-untyped-def]
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_gpt_imports_nothing_of_the_service() -> None:
    files = list((ROOT / "gpt").rglob("*.py"))
    assert files
    offenders = {str(f.relative_to(ROOT)): r for f in files if (r := _imported_roots(f) & {"api", "worker"})}
    assert not offenders


def test_api_sources_do_not_import_torch_or_worker() -> None:
    # Catches a lazy import inside a function, which the subprocess check above cannot see.
    offenders = {
        str(f.relative_to(ROOT)): r
        for f in (ROOT / "api").rglob("*.py")
        if (r := _imported_roots(f) & {"torch", "worker"})
    }
    assert not offenders
