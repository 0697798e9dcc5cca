"""Imports point one way: hwmodels -> kernels -> simulator -> planners -> validate -> tierplan.

Every ``import`` and ``from ... import`` in the packages (module level and inside functions) is
read from the source; none may name a package above its own.
"""

import ast
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = ("hwmodels", "kernels", "simulator", "planners", "validate", "tierplan")


def imported_packages(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out & set(LAYERS)


@pytest.mark.parametrize("package", LAYERS)
def test_no_package_imports_one_above_it(package):
    rank = LAYERS.index(package)
    above = set(LAYERS[rank + 1:])
    bad = []
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        for name in sorted(imported_packages(path) & above):
            bad.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_scan_sees_an_upward_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from validate import bench\n    import planners.plan\n")
    assert imported_packages(f) == {"validate", "planners"}
