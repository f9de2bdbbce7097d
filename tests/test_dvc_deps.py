"""dvc.yaml's deps and params stay right: each stage lists every dr_core module it can import and the
settings it reads, so DVC reruns a stage whenever something that shapes its output changes.

The import closure is computed from the source (every ``import dr_core...``, also inside functions); the
settings a stage reads are its ``PARAMS``, which :meth:`dr_core.config.Params.only` enforces at run time.
"""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PIPELINES = ("dvc.yaml", "cv/dvc.yaml")


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The source file of a project module (``dr_core.data.split``), or None outside the project."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path, root: Path = REPO) -> set[str]:
    """Project modules that ``path`` imports anywhere in its body (dr_core and stages only)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from dr_core.data import dedup` imports the submodule dr_core.data.dedup
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in ("dr_core", "stages") and module_file(n, root))
    return found


def import_closure(module: str, root: Path = REPO) -> set[Path]:
    """Every project source file that running ``python -m module`` can execute, package __init__s included."""
    todo, seen, files = [module], set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parents run their __init__ first
        path = module_file(name, root)
        if path is None:
            continue
        files.add(path)
        todo += sorted(imported_modules(path, root))
    return files


def stage_module(cmd: str) -> str:
    words = cmd.split()
    assert words[:2] == ["python", "-m"], f"stage command should be `python -m stages.<name> ...`: {cmd!r}"
    return words[2]


def missing_deps(stage: dict, root: Path = REPO) -> list[str]:
    """Closure files of a stage's command that none of its deps (file or folder) covers.

    ``root`` is the folder the stage runs in (its dvc.yaml's folder joined with its ``wdir``).
    """
    deps = [(root / d).resolve() for d in stage.get("deps", []) if "${" not in d]
    closure = import_closure(stage_module(stage["cmd"]), root)
    return sorted(str(f.relative_to(root)) for f in closure
                  if not any(f.resolve() == d or d in f.resolve().parents for d in deps))


def declared_params(stage: dict) -> set[str]:
    out: set[str] = set()
    for entry in stage.get("params", []):
        if isinstance(entry, str):
            out.add(entry)
        else:  # {other_params.yaml: [keys]}
            out.update(key for keys in entry.values() for key in keys)
    return out


def stages_of(pipeline: str, root: Path = REPO) -> dict[str, dict]:
    """The stages of a dvc.yaml; a ``foreach`` stage as its ``do`` body (``${key}`` left unresolved)."""
    stages = yaml.safe_load((root / pipeline).read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def stage_root(pipeline: str, stage: dict) -> Path:
    """Where a stage runs: its dvc.yaml's folder joined with ``wdir`` (cv/dvc.yaml's stages use ``..``)."""
    return ((REPO / pipeline).parent / stage.get("wdir", ".")).resolve()


def stage_reads(stage: dict) -> tuple[str, ...]:
    """The settings the stage's module declares for this command: ``FOLD_PARAMS`` with ``--fold``. A
    foreach stage's ``PARAMS`` hold ``${key}`` verbatim, as its dvc.yaml entry does."""
    module = importlib.import_module(stage_module(stage["cmd"]))
    return module.FOLD_PARAMS if "--fold" in stage["cmd"].split() else module.PARAMS


CASES = [(p, name) for p in PIPELINES for name in stages_of(p)]


@pytest.mark.parametrize(("pipeline", "name"), CASES)
def test_stage_deps_cover_its_import_closure(pipeline: str, name: str) -> None:
    stage = stages_of(pipeline)[name]
    assert stage_root(pipeline, stage) == REPO, f"{pipeline}: stage {name!r} must run at the repository root"
    assert missing_deps(stage) == [], f"{pipeline}: stage {name!r} imports modules missing from its deps"


@pytest.mark.parametrize(("pipeline", "name"), CASES)
def test_stage_params_equal_what_the_stage_reads(pipeline: str, name: str) -> None:
    stage = stages_of(pipeline)[name]
    reads = stage_reads(stage)
    assert set(reads) == declared_params(stage), (
        f"{pipeline}: stage {name!r} declares params {sorted(declared_params(stage))} but reads {sorted(reads)} "
        f"(PARAMS in stages/{stage_module(stage['cmd']).split('.')[-1]}.py)")


def test_a_missing_module_is_reported() -> None:
    """The check itself: removing one module from a stage's deps is caught and named."""
    stage = dict(stages_of("dvc.yaml")["train"])
    covered = [d for d in stage["deps"] if d.startswith("dr_core")]
    assert covered, "train lists no dr_core deps"
    broken = dict(stage, deps=[d for d in stage["deps"] if d != covered[0]])
    assert missing_deps(broken), f"removing {covered[0]} from train's deps went unnoticed"


def test_closure_follows_function_level_and_package_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "dr_core"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from dr_core.sub.a import x\n")
    (pkg / "sub" / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from dr_core.sub import c\n")
    (pkg / "sub" / "c.py").write_text("")
    (pkg / "top.py").write_text("import os\nfrom dr_core.sub import b\n")
    found = {str(p.relative_to(tmp_path)) for p in import_closure("dr_core.top", tmp_path)}
    assert found == {"dr_core/__init__.py", "dr_core/top.py", "dr_core/sub/__init__.py", "dr_core/sub/a.py",
                     "dr_core/sub/b.py", "dr_core/sub/c.py"}


@pytest.mark.parametrize(("pipeline", "name"), CASES)
def test_no_setting_is_pasted_into_a_shell_command(pipeline: str, name: str) -> None:
    """A path such as ``my photos/`$(touch PWNED)`` must never reach the shell: stages read params themselves.
    Only a matrix item (a fold number) or a foreach ``${key}`` may: a source's or external set's name, which
    params.yaml allows as letters, digits, '_' and '-' only (dr_core.config.params.SOURCE_NAME)."""
    cmd = stages_of(pipeline)[name]["cmd"]
    assert not re.search(r"\$\{(?!item\.fold\}|key\})", cmd), \
        f"{pipeline}: stage {name!r} puts a setting into its command: {cmd!r}"


def test_foreach_names_are_safe_in_a_command() -> None:
    from dr_core.config import ConfigError, params_from_dict

    for name in ("a b", "x;touch PWNED", "$(id)", "a.b", "../up"):
        folder = {name: {"labels_csv": "l.csv", "img_dir": "i"}}
        with pytest.raises(ConfigError, match="must be letters, digits"):
            params_from_dict({"data": {"sources": folder}}, validate=False).data.validate()
        with pytest.raises(ConfigError, match="must be letters, digits"):
            params_from_dict({"evaluate": {"external": folder}}, validate=False).evaluate.validate()
