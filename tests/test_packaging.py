"""A fresh install of `.[test]` must satisfy every import the suite makes at module level.

CI installs the project into a brand-new virtual environment (`.ci/run`), but a package that a
developer installed by hand would still hide a missing declaration on their machine. This test
reads the declared dependencies (pyproject: `dependencies` plus the `test` extra, followed through
each distribution's own requirements) and fails on any module-level import of a third-party
package that they do not provide. Imports inside functions or under `try: ... except ImportError`
are optional by construction (e.g. torch in the comparison benchmark) and are not counted.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import os
import re
import shutil
import sys
import tomllib
import zipfile

from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIRS = ("cbsa_jax", "train", "configs", "benchmarks", "experiments", "tests")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions(pyproject: str, extra: str = "test") -> set[str]:
    """Normalised names of every distribution that `pip install .[extra]` brings in."""
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    own, extras = _norm(project["name"]), project.get("optional-dependencies", {})
    todo = [Requirement(r) for r in project.get("dependencies", [])]
    seen_extras: set[str] = set()

    def add_extra(name: str) -> None:
        if name in seen_extras:
            return
        seen_extras.add(name)
        for text in extras.get(name, []):
            req = Requirement(text)
            if _norm(req.name) == own:
                for e in req.extras:
                    add_extra(e)
            else:
                todo.append(req)

    add_extra(extra)
    closure: set[str] = set()
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = _norm(req.name)
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            wanted = list(req.extras) or [""]
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in wanted):
                todo.append(sub)
    return closure


def _optional(parents) -> bool:
    for node in parents:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return True
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError",
                                                                "ModuleNotFoundError")
                for h in node.handlers):
            return True
    return False


def module_level_imports(source: str, filename: str = "<source>"):
    """(top-level module, line) of every import that runs when the module is imported."""
    stack = [(ast.parse(source, filename), [])]
    while stack:
        node, parents = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import) and not _optional(parents):
                for alias in child.names:
                    yield alias.name.split(".")[0], child.lineno
            elif isinstance(child, ast.ImportFrom):
                if child.level == 0 and child.module and not _optional(parents):
                    yield child.module.split(".")[0], child.lineno
            else:
                stack.append((child, parents + [child]))


def undeclared_imports(root: str, declared: set[str]) -> list[str]:
    """`path:line imports X (...)` for every module-level import `declared` does not provide."""
    providers = metadata.packages_distributions()
    local = set(SOURCE_DIRS) | {os.path.splitext(f)[0] for f in os.listdir(root)}
    problems = []
    for top in SOURCE_DIRS:
        for dirpath, dirnames, files in os.walk(os.path.join(root, top)):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in sorted(files):
                if not f.endswith(".py"):
                    continue
                path = os.path.join(dirpath, f)
                with open(path, encoding="utf-8") as fh:
                    source = fh.read()
                for module, line in module_level_imports(source, path):
                    if module in sys.stdlib_module_names or module in local or module[0] == "_":
                        continue
                    dists = {_norm(d) for d in providers.get(module, [])}
                    if dists & declared:
                        continue
                    why = (f"provided by {', '.join(sorted(dists))}, not declared" if dists
                           else "not installed here, not declared")
                    problems.append(f"{os.path.relpath(path, root)}:{line} imports {module} "
                                    f"({why})")
    return problems


def test_every_module_level_import_is_declared():
    declared = declared_distributions(os.path.join(ROOT, "pyproject.toml"))
    problems = undeclared_imports(ROOT, declared)
    assert not problems, ("imports a fresh `pip install -e .[test]` would not satisfy (declare the "
                          "package in pyproject.toml, or import it inside the function that "
                          "needs it):\n" + "\n".join(problems))


def test_the_check_catches_an_undeclared_import(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "import numpy\nimport torch_that_nobody_declared\n\n"
        "def f():\n    import optional_inside_a_function\n\n"
        "try:\n    import optional_by_try\nexcept ImportError:\n    pass\n")
    problems = undeclared_imports(str(tmp_path), {"numpy"})
    assert problems == ["tests/test_x.py:2 imports torch_that_nobody_declared "
                        "(not installed here, not declared)"]


def test_the_declared_closure_follows_extras_and_requirements():
    declared = declared_distributions(os.path.join(ROOT, "pyproject.toml"))
    assert {"jax", "flax", "pytest", "tensorflow-datasets"} <= declared  # direct, via [train]
    assert "jaxlib" in declared  # a requirement of a requirement
    assert "torch" not in declared


def test_the_wheel_installs_the_library_only(tmp_path):
    """A wheel built from the project holds `cbsa_jax` and its dist-info at the top and nothing
    else: no `train`, `configs`, `benchmarks` or `experiments` to shadow a user's own."""
    from setuptools import build_meta

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    for top in SOURCE_DIRS:
        if os.path.isdir(os.path.join(ROOT, top)):
            shutil.copytree(os.path.join(ROOT, top), src / top,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "dist"
    out.mkdir()
    cwd = os.getcwd()
    try:
        os.chdir(src)
        wheel = build_meta.build_wheel(str(out))
    finally:
        os.chdir(cwd)
    with zipfile.ZipFile(out / wheel) as zf:
        names = zf.namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"cbsa_jax"}, sorted(tops)
    assert len(dist_info) == 1
    assert {"cbsa_jax/__init__.py", "cbsa_jax/attention/causal.py",
            "cbsa_jax/convert/official.py", "cbsa_jax/nn/causal.py"} <= set(names)
