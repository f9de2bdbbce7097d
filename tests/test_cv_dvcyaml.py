"""cv/dvc.yaml read as YAML: each stage depends on every dr_core module its command imports, and no
command carries a value from params.yaml."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO

STAGES = yaml.safe_load((REPO / "cv" / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    path = REPO.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_closure(module: str) -> set[Path]:
    """Files of ``module`` and of every ``dr_core`` module it imports, at any depth and in any scope
    (an import inside a function counts: it runs when that function does)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        # a package's __init__ runs before any of its modules
        files = [_module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)]
        for file in filter(None, files):
            if file in seen:
                continue
            seen.add(file)
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    todo += [a.name for a in node.names if a.name.startswith("dr_core")]
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dr_core"):
                    todo.append(node.module)
                    todo += [f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")]
    return seen


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_depends_on_the_code_it_runs(name):
    stage = STAGES[name]
    entry = re.search(r"python -m (stages\.\w+)", stage["cmd"])[1]
    deps = [REPO / d for d in stage["deps"] if "$" not in d]
    # the top-level __init__ files hold a docstring and a version string, no code a stage runs
    trivial = {REPO / "dr_core" / "__init__.py", REPO / "stages" / "__init__.py"}
    missing = sorted(str(f.relative_to(REPO)) for f in import_closure(entry) - trivial
                     if not any(f == d or d in f.parents for d in deps))
    assert not missing, f"cv/dvc.yaml stage {name!r} imports {missing} but does not list them (or their folder) in deps"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_no_command_carries_a_value_from_params(name):
    assert not re.search(r"\$\{(?!item\.)", STAGES[name]["cmd"]), STAGES[name]["cmd"]
