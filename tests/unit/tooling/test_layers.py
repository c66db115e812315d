"""The layer contract (docs/internals.md, "Layers"), checked on every CI run.

1. ``lint-imports`` (import-linter, configured in pyproject.toml) finds no import from a
   lower layer to a higher one in ``distengine/``; and it does report one planted in a copy
   of the package, so this test cannot pass by checking nothing.
2. No module imports distengine inside a function to dodge a cycle: every function-level
   ``import distengine...`` or relative import is in :data:`ALLOWED`, with its reason.
3. No package reads another's private names: ``obj._name`` (obj not ``self``/``cls``) or
   ``from ... import _name`` where ``_name`` is not defined in the reading package, except
   the private names of other libraries in :data:`FOREIGN_PRIVATE` (with their reason).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# (module file relative to the repository, imported module) -> why it is imported in a function
ALLOWED: dict[tuple[str, str], str] = {
    ("distengine/distributed/__init__.py", "distengine.data.loader"): (
        "idist.auto_dataloader, Ignite's name: the one upward re-export, lazy (PEP 562)"
    ),
    ("distengine/distributed/auto.py", "distengine.data.loader"): (
        "ignite.distributed.auto.auto_dataloader: the same re-export, lazy (PEP 562)"
    ),
    ("distengine/distributed/sharded.py", "distengine.distributed.dcp_storage"): (
        "imports torch.distributed.checkpoint, which takes seconds: only when a sharded "
        "checkpoint is written or read"
    ),
}


# private names of other libraries that distengine reads on purpose -> why
FOREIGN_PRIVATE: dict[str, str] = {
    "_orig_mod": "torch.compile's wrapper: its original module (checkpoint keys without prefix)",
    "_inst": "random's global Random instance (SeededDataset compares its state)",
    "_rand": "numpy's global RandomState (SeededDataset)",
    "_bit_generator": "numpy's RandomState's generator (SeededDataset copies its state)",
    "_current_frames": "sys: every thread's stack for hang reports",
    "_exit": "os._exit: a failed rank ends without running exit handlers",
    "_get_default_store": "torch.distributed: the store of a group the user created",
    "_defaults": "torchmetrics.Metric: its declared states (TorchMetric reduces them)",
    "_fields": "a named tuple's field names (documented namedtuple API)",
}


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    lint = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which(
        "lint-imports"
    )
    if lint is None:
        pytest.fail("lint-imports is missing: pip install -r requirements-ci.txt (import-linter)")
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # analyse this tree's distengine
    return subprocess.run(
        [lint, "--config", str(cwd / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_layer_contract_holds():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize(
    "module, line, expected",
    [
        # distributed is the lowest library layer: it may not import the engine
        (
            "distengine/distributed/planted.py",
            "from distengine.engine import Engine\n",
            "distengine.distributed.planted -> distengine.engine",
        ),
        # nor may it import the data layer other than through the declared re-export
        (
            "distengine/distributed/planted.py",
            "from distengine.data.seeded import SeededDataset\n",
            "distengine.distributed.planted -> distengine.data.seeded",
        ),
        # checkpoint sits below handlers, even inside a function
        (
            "distengine/checkpoint/planted.py",
            "def f():\n    from distengine.handlers import Checkpoint\n",
            "distengine.checkpoint.planted -> distengine.handlers",
        ),
        # the engine may not import metrics (they attach to it)
        (
            "distengine/engine/planted.py",
            "import distengine.metrics.metric\n",
            "distengine.engine.planted -> distengine.metrics.metric",
        ),
    ],
)
def test_layer_contract_reports_an_upward_import(tmp_path, module, line, expected):
    shutil.copytree(
        ROOT / "distengine", tmp_path / "distengine", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / module).write_text(line)
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and expected in result.stdout, result.stdout


def function_level_imports(path: Path, relative_to: Path) -> list[tuple[str, str, int]]:
    """``(file, imported module, line)`` of every distengine import inside a function."""
    rel = path.relative_to(relative_to).as_posix()
    parts = list(Path(rel).with_suffix("").parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    package = [p for p in package if p != "__init__"]
    found: list[tuple[str, str, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if in_function and isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == "distengine" or alias.name.startswith("distengine."):
                        found.append((rel, alias.name, child.lineno))
            elif in_function and isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - (child.level - 1)]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module or ""
                if name == "distengine" or name.startswith("distengine."):
                    if name in ("distengine", *(".".join(package[:i]) for i in (1, 2))):
                        # "from distengine import distributed": name the submodules
                        found.extend((rel, f"{name}.{a.name}", child.lineno) for a in child.names)
                    else:
                        found.append((rel, name, child.lineno))
            visit(child, inner)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return found


def test_no_function_level_imports_outside_the_allow_list():
    found = [
        hit
        for path in sorted((ROOT / "distengine").rglob("*.py"))
        for hit in function_level_imports(path, ROOT)
    ]
    unexplained = [f"{f}:{line} imports {m}" for f, m, line in found if (f, m) not in ALLOWED]
    assert not unexplained, (
        "imports inside functions (a cycle to break, or add it to ALLOWED with the reason): "
        + "; ".join(unexplained)
    )
    stale = set(ALLOWED) - {(f, m) for f, m, _ in found}
    assert not stale, f"ALLOWED lists imports that are gone: {sorted(stale)}"


def test_function_level_import_check_finds_planted_imports(tmp_path):
    pkg = tmp_path / "distengine" / "metrics"
    pkg.mkdir(parents=True)
    (pkg / "planted.py").write_text(
        "import torch\n"
        "from distengine.metrics import usage\n"  # module level: fine
        "def f():\n"
        "    import numpy\n"  # not distengine: fine
        "    from distengine.metrics.attachment import reducer_of\n"
        "    class C:\n"
        "        def g(self):\n"
        "            from . import metric\n"
        "            from ..engine import Events\n"
        "            import distengine.checkpoint\n"
    )
    found = function_level_imports(pkg / "planted.py", tmp_path)
    assert [(m, line) for _, m, line in found] == [
        ("distengine.metrics.attachment", 5),
        ("distengine.metrics.metric", 8),
        ("distengine.engine", 9),
        ("distengine.checkpoint", 10),
    ]


def _package(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def cross_package_private_reads(root: Path) -> list[str]:
    """``file:line name`` of each read of a private name not defined in the reading package."""
    trees = {p: ast.parse(p.read_text(), filename=str(p)) for p in sorted(root.rglob("*.py"))}
    defined: dict[str, set[str]] = {}
    for path, tree in trees.items():
        names = defined.setdefault(_package(path, root), set())
        names.update(path.relative_to(root).with_suffix("").parts)  # its (private) modules
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Store):
                names.add(node.id if isinstance(node, ast.Name) else node.attr)
    found = []
    for path, tree in trees.items():
        own = defined[_package(path, root)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                value = node.value
                if isinstance(value, ast.Name) and value.id in ("self", "cls"):
                    continue
                names = [(node.attr, node.lineno)]
            elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                names = [(a.name, node.lineno) for a in node.names]
            elif (  # getattr(obj, "_name"), hasattr, setattr
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr", "setattr")
                and len(node.args) >= 2
                and not (isinstance(node.args[0], ast.Name) and node.args[0].id in ("self", "cls"))
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                names = [(node.args[1].value, node.lineno)]
            else:
                continue
            for name, line in names:
                private = name.startswith("_") and not name.startswith("__")
                if private and name not in own and name not in FOREIGN_PRIVATE:
                    found.append((path.relative_to(root.parent).as_posix(), line, name))
    return [f"{file}:{line} {name}" for file, line, name in sorted(found)]


def test_no_package_reads_another_packages_private_names():
    found = cross_package_private_reads(ROOT / "distengine")
    assert not found, "private names read across packages (give them a public API): " + "; ".join(
        found
    )


def test_private_read_check_finds_planted_reads(tmp_path):
    for package, text in {
        "engine": "class Engine:\n    def __init__(self):\n        self._event_handlers = {}\n",
        "handlers": (
            "from distengine.engine.engine import _private_helper\n"
            "def f(engine):\n"
            "    return engine._event_handlers, engine.state._own\n"
            "def h(engine):\n"
            "    return getattr(engine, '_event_handlers', {})\n"
            "def g(x):\n"
            "    x._own = 1\n"
            "    setattr(x, '_distengine_reducer', 2)\n"
        ),
    }.items():
        (tmp_path / "distengine" / package).mkdir(parents=True)
        (tmp_path / "distengine" / package / "mod.py").write_text(text)
    assert cross_package_private_reads(tmp_path / "distengine") == [
        "distengine/handlers/mod.py:1 _private_helper",
        "distengine/handlers/mod.py:3 _event_handlers",
        "distengine/handlers/mod.py:5 _event_handlers",
        "distengine/handlers/mod.py:8 _distengine_reducer",
    ]
