"""The package's architecture, read from the code: the import graph of genlora_pl's own modules
(function-level and type-only imports included) has no cycle, arrows run one way between layers, and our own
modules are imported inside functions only where that keeps ``--help`` fast."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "genlora_pl"
# Layers, bottom first: a module may import its own layer and the layers below, never above.
LAYERS = [
    {"errors", "checks", "files", "schedules", "plots", "console", "quantize"},
    {"adapters"},
    {"injection", "distributed", "compat"},
    {"state", "spectra", "backbones", "checkpoints"},
    {"data", "tasks"},
    {"callbacks", "export"},
    {"cli", "harness", "tune"},
    {"__main__", "__init__"},
]
# Our modules imported inside a function, each for a reason (the tests below say which).
LAZY = {
    ("__main__", "genlora_pl.cli"): "--help answers before Lightning and torch are imported",
    ("__main__", "genlora_pl.export.cli"): "--help answers before Lightning and torch are imported",
    ("__main__", "genlora_pl.console"): "--help answers before Lightning and torch are imported",
    ("export.cli", "genlora_pl.console"): "export's bad arguments are refused before Lightning and torch load",
    ("export.cli", "genlora_pl.export.checkpoint"): "export's bad arguments are refused before torch loads",
    ("__main__", "genlora_pl.harness"): "--help answers before Lightning and torch are imported",
    ("__main__", "genlora_pl.tune.cli"): "--help answers before Lightning and torch are imported",
    ("tune.cli", "genlora_pl.tune.study"): "tune --help and its bad options answer before Lightning and torch load",
    ("compat", "genlora_pl.adapters.genlora"): "the package __init__ installs compat's module redirects before torch",
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("genlora_pl", *parts))
        out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported genlora_pl module, at function level)`` for every import in a file."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("genlora_pl"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("genlora_pl")]
        else:
            continue
        nested = any(
            isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef))
            and any(child is node for child in ast.walk(parent))
            for parent in ast.walk(tree)
        )
        found += [(n, nested) for n in names]  # type-only imports (under TYPE_CHECKING) are arrows too
    return found


def resolve(target: str, known: dict[str, Path]) -> str:
    """The module an import names (``from genlora_pl.x import f`` names ``genlora_pl.x``)."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for name, path in known.items():
        for target, _ in imports(path):
            target = resolve(target, known)
            if target and target != name:
                edges[name].add(target)
    return edges


def layer(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*path, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_arrows_run_one_way():
    for module, targets in graph().items():
        for target in targets:
            assert layer(target) <= layer(module), (
                f"{module} (layer {layer(module)}) imports {target} ({layer(target)})"
            )


def test_adapters_import_nothing_of_ours_outside_adapters():
    for module, targets in graph().items():
        if module.startswith("genlora_pl.adapters"):
            assert all(t.startswith("genlora_pl.adapters") for t in targets), (module, targets)


def test_function_level_imports_of_our_modules_are_the_documented_lazy_ones():
    known = modules()
    nested = set()
    for name, path in known.items():
        short = name.removeprefix("genlora_pl.") if name != "genlora_pl" else "__init__"
        nested |= {(short, resolve(target, known)) for target, inside in imports(path) if inside}
    assert nested == set(LAZY)
