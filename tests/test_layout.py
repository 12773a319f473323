"""The test suite's own layout: every test module stands alone.

Shared code lives in tests/conftest.py (fixtures) and tests/helpers/ (everything else). A test
module that imported another test module, conftest or a bench script, or edited sys.path,
would pass in a full run and fail when run alone (``pytest tests/test_x.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
BENCH_SCRIPTS = {p.stem for p in (TESTS.parent / "bench").glob("*.py")}
TEST_MODULES = sorted(TESTS.glob("test_*.py"))
SHARED_CODE = sorted((TESTS / "helpers").glob("*.py")) + [TESTS / "conftest.py"]


def imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.add(base)
            # `from tests import test_send` names the module in the alias.
            sep = "" if base.endswith(".") else "."
            names.update(f"{base}{sep}{alias.name}" for alias in node.names)
    return names


def forbidden_import(module: str) -> bool:
    parts = module.lstrip(".").split(".")
    return (
        module.startswith(".")  # a relative import reaches a sibling test module or conftest
        or any(part.startswith("test_") or part == "conftest" for part in parts)
        or parts[0] in BENCH_SCRIPTS
        or parts[0] == "bench"
    )


def edits_sys_path(tree: ast.AST) -> bool:
    return any(
        isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
        for node in ast.walk(tree)
    )


def parse(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), filename=str(path))


def test_the_suite_has_test_modules_and_helpers() -> None:
    assert len(TEST_MODULES) > 20
    assert (TESTS / "helpers" / "__init__.py").is_file()


def test_no_test_module_imports_another_test_module_conftest_or_bench() -> None:
    offenders = {
        path.name: sorted(m for m in imported_modules(parse(path)) if forbidden_import(m))
        for path in TEST_MODULES + SHARED_CODE
    }
    assert {name: bad for name, bad in offenders.items() if bad} == {}


def test_no_test_module_edits_sys_path() -> None:
    assert [p.name for p in TEST_MODULES + SHARED_CODE if edits_sys_path(parse(p))] == []


def test_the_checks_catch_forbidden_imports_and_path_edits() -> None:
    for source in (
        "from test_send import cli",
        "from tests.test_send import FakeClock",
        "from tests import test_send",
        "import tests.test_send",
        "from tests.conftest import SimServerFactory",
        "from . import conftest",
        "from bounce_accuracy import COMPLAINT_TYPES",
    ):
        assert any(forbidden_import(m) for m in imported_modules(ast.parse(source))), source
    assert edits_sys_path(ast.parse("import sys\nsys.path.insert(0, 'bench')\n"))
    good = ast.parse(
        "import sys\nfrom mailctl.cli import run\nfrom tests.helpers.clock import FakeClock\n"
    )
    assert [m for m in imported_modules(good) if forbidden_import(m)] == []
    assert not edits_sys_path(good)
