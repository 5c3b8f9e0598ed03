"""The code's layout, as the README's "How the code is laid out" section states it: three floors (the run folder's
format, the training path, the tools), imports going down only, no import circle, functions and modules of a
readable size. Read from the source with `ast` (function-level imports included), not by importing it."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer", "models")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 300
SIZE_WHY = "# size:"  # a module or function longer than the limits says why on a line starting so


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in the file; `from pkg import mod` counts as pkg.mod."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [n for n in subs if n in known] or [node.module]  # modules imported, else the module itself
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name not in PACKAGES:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def floor(module: str) -> int:
    """0: the run folder's format (and shared wording); 1: models and the training path; 2: the tools."""
    if module in ("trainer.runfolder", "trainer.text"):
        return 0
    return 2 if module.startswith("trainer.tools") else 1


def test_the_circle_finder_finds_a_circle_of_three():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_in_trainer_or_models():
    assert circles(import_graph()) == []


def test_imports_go_down_only():
    """A module imports only its own floor or lower; models import nothing of trainer's; the training path
    imports one tool, the report that trainer/main.py builds once when the run ends."""
    up = [(m, dep) for m, deps in import_graph().items() for dep in deps if floor(dep) > floor(m)
          and (m, dep) != ("trainer.main", "trainer.tools.report")]
    assert up == []
    assert [(m, d) for m, deps in import_graph().items() if m.startswith("models") for d in deps
            if d.startswith("trainer")] == []


def test_the_training_path_uses_the_report_only_when_the_run_ends():
    tree = ast.parse((REPO / "trainer" / "main.py").read_text())
    users = {fn.name for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
             for node in ast.walk(fn) if isinstance(node, ast.Attribute)
             and isinstance(node.value, ast.Name) and node.value.id == "report"}
    assert users <= {"finish"}


def long_parts(path: Path) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    found = []
    if len(lines) > MAX_MODULE_LINES and not any(line.startswith(SIZE_WHY) for line in lines):
        found.append(f"{path.relative_to(REPO)}: {len(lines)} lines")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = lines[node.lineno - 1:node.end_lineno]
            if len(body) > MAX_FUNCTION_LINES and not any(line.strip().startswith(SIZE_WHY) for line in body):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {len(body)} lines")
    return found


def test_functions_and_modules_stay_readable_or_say_why():
    assert [part for p in project_modules().values() for part in long_parts(p)] == []


def readme_layout() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"^## How the code is laid out\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, "README.md has no '## How the code is laid out' section"
    return match.group(1)


@pytest.mark.parametrize("module", sorted(m for m in project_modules() if m not in PACKAGES))
def test_the_readme_layout_names_every_module_where_it_lives(module):
    path = project_modules()[module].relative_to(REPO)
    shown = path.parent.as_posix() + "/" if path.name == "__init__.py" else path.as_posix()
    assert f"`{shown}`" in readme_layout() or f"`{path.name}`" in readme_layout(), shown


def test_every_path_the_readme_layout_names_exists():
    named = re.findall(r"`((?:trainer|models|configs|tests|benchmarks|scripts|results)/[\w./-]*)`", readme_layout())
    assert named and [n for n in named if not (REPO / n).exists()] == []
