"""The package's layers only look down, and no modules import each other in a circle
(ARCHITECTURE.md, "Layers"). Read from the source with ``ast``: every import, at module level,
inside functions and under ``TYPE_CHECKING``, counts."""

from __future__ import annotations

import ast
from pathlib import Path

from .helpers import REPO

# lowest first; a module may import its own layer and those below it
LAYERS = [
    ["_version", "errors", "extras", "hardware", "imagesize", "png", "telemetry", "metrics", "stats", "kernels"],
    ["config", "distributed", "resources"],
    ["model"],
    ["checkpoint", "data", "io", "metadata", "arrays", "device_io"],
    ["export"],
    ["runners"],
    ["tiling"],
    ["quality", "gate"],
    ["backend_quality", "upscale", "describe"],
    ["api", "train"],
    ["study", "bench"],
    ["cli"],
]


def _module(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(mod: str, root: Path) -> bool:
    path = root.joinpath(*mod.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path, root: Path) -> set[str]:
    """The package's modules that ``path`` imports (``from x import name`` counts ``x.name``
    where that is a module, else ``x``)."""
    mod = _module(path, root)
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.add(full if _exists(full, root) else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("mcan_deploy.") and _exists(m, root)}


def graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, for the package under ``root``."""
    return {_module(p, root): _imports(p, root) for p in (root / "mcan_deploy").rglob("*.py")}


def layer(mod: str) -> int | None:
    top = mod.split(".")[1] if "." in mod else None
    return next((i for i, names in enumerate(LAYERS) if top in names), None)


def upward(g: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{mod} (layer {layer(mod)}) imports {dep} (layer {layer(dep)})"
        for mod, deps in g.items()
        for dep in deps
        if (lm := layer(mod)) is not None and (ld := layer(dep)) is not None and ld > lm
    )


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Import circles between modules (a package and its own modules excepted)."""
    g = {m: d for m, d in g.items() if m != "mcan_deploy"}  # the root hands on names lazily
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found: list[list[str]] = []

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(g.get(mod, ())):
            if dep.startswith(mod + ".") or mod.startswith(dep + "."):
                continue
            if state.get(dep) == 1:
                found.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[mod] = 2

    for mod in sorted(g):
        if mod not in state:
            visit(mod, [mod])
    return found


def test_every_module_has_a_layer():
    package = REPO / "mcan_deploy"
    tops = {p.relative_to(package).parts[0].removesuffix(".py") for p in package.rglob("*.py")} - {"__init__"}
    assert {t for t in tops if layer(f"mcan_deploy.{t}") is None} == set()


def test_imports_only_look_down():
    assert upward(graph()) == []


def test_no_modules_import_each_other_in_a_circle():
    assert circles(graph()) == []


def test_the_checks_see_an_upward_import_and_a_circle(tmp_path):
    root = tmp_path / "mcan_deploy"
    (root / "train").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "model.py").write_text("from .train import loop\n")
    (root / "train" / "__init__.py").write_text("")
    (root / "train" / "loop.py").write_text("from . import step\n")
    (root / "train" / "step.py").write_text("if False:\n    from .loop import x\n")
    g = graph(tmp_path)
    assert upward(g) == ["mcan_deploy.model (layer 2) imports mcan_deploy.train.loop (layer 9)"]
    assert circles(g) == [["mcan_deploy.train.loop", "mcan_deploy.train.step", "mcan_deploy.train.loop"]]
