"""The package graph flows one way: every dlforge import goes to the same package or a lower layer, and no two
packages import each other, not even inside a function (issue 19). Also what `import dlforge` and
`import dlforge.training` load, which is what their import time is made of.

Each module under src/dlforge is parsed with `ast` (nothing is imported), so the test also sees imports inside
functions; a failure lists every offending edge as `file:line -> target`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "dlforge"

# Lowest first. A module may import from its own package, from another package of its own layer (so long as the
# two do not import each other) or from a lower layer. The root package (dlforge/__init__.py, __main__.py) is above
# everything.
LAYERS = {
    "errors": 0, "paths": 0, "io": 0, "settings": 0, "devices": 0,
    "hub": 1, "nn": 1,
    "data": 2, "text": 2, "diffusion": 2,
    "models": 3,
    "metrics": 4,
    "training": 5,
    "transfer": 6,
    "pipelines": 7,
    "cli": 8,
    "": 9,  # the root package
}
# Names any module may take from the root package: metadata it defines before importing anything.
ROOT_METADATA = {"__version__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """dlforge.training.trainer -> "training"; dlforge.errors -> "errors"; dlforge / dlforge.__main__ -> ""."""
    parts = module.split(".")
    return "" if len(parts) == 1 or parts[1] == "__main__" else parts[1]


def resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of `from <level dots><target> import ...` written in `module`."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def dlforge_imports(source: str, module: str, is_package: bool) -> list[tuple[int, str, bool, tuple[str, ...]]]:
    """(line, imported dlforge module, at module level?, names taken from it) for every dlforge import in `source`,
    the code of `module`:
    `import dlforge.x`, `from dlforge.x import y`, relative imports and `importlib.import_module("dlforge.x...")`
    (an f-string counts by its constant start)."""
    tree = ast.parse(source)
    inside_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside_function.update(id(child) for child in ast.walk(node) if child is not node)
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        names: tuple[str, ...] = ()
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = resolve_relative(module, is_package, node.level, node.module) if node.level else node.module
            if target == "dlforge" and {alias.name for alias in node.names} <= ROOT_METADATA:
                continue
            targets, names = [target or ""], tuple(alias.name for alias in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args):
            first = node.args[0]
            if isinstance(first, ast.JoinedStr) and first.values and isinstance(first.values[0], ast.Constant):
                first = first.values[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                targets = [first.value.rstrip(".")]
        found += [(node.lineno, t, id(node) not in inside_function, names)
                  for t in targets if t == "dlforge" or t.startswith("dlforge.")]
    return found


def all_edges() -> list[tuple[str, int, str, str, str, bool]]:
    """(file, line, target module, from package, to package, at module level?) for imports between packages."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = package_of(module_name(path))
        code = path.read_text(encoding="utf-8")
        for line, target, top_level, _ in dlforge_imports(code, module_name(path), path.name == "__init__.py"):
            if package_of(target) != source:
                edges.append((str(path.relative_to(SRC)), line, target, source, package_of(target), top_level))
    return edges


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every node some path of one or more edges leads to from `start`."""
    seen, todo = set(), [start]
    while todo:
        for successor in graph[todo.pop()] - seen:
            seen.add(successor)
            todo.append(successor)
    return seen


def describe(edge) -> str:
    file, line, target, *_ = edge
    return f"{file}:{line} -> {target}"


def test_every_package_has_a_layer():
    packages = {package_of(module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert packages - set(LAYERS) == set(), "new package(s) without a layer: add them to LAYERS in this test"


def test_imports_go_to_the_same_or_a_lower_layer():
    upward = [edge for edge in all_edges() if LAYERS[edge[4]] > LAYERS[edge[3]]]
    assert not upward, "imports into a higher layer:\n" + "\n".join(map(describe, upward))


def test_no_two_packages_import_each_other():
    edges = all_edges()
    graph = defaultdict(set)
    for edge in edges:
        graph[edge[3]].add(edge[4])

    # an edge a -> b closes a cycle when b leads back to a
    in_cycles = [edge for edge in edges if edge[3] in reachable(graph, edge[4])]
    assert not in_cycles, "imports on a cycle between packages:\n" + "\n".join(map(describe, in_cycles))


def test_no_module_level_import_cycles():
    """No module imports, while it is being imported, a module that imports it back (directly or around a loop):
    such a module would see the other half-initialised. `from package import name` counts as an import of the
    submodule package.name when there is one, else of the package's __init__; importing a.b.c also runs the
    __init__ of a.b (unless the importer is inside a.b: then it is already running)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph, lines = defaultdict(set), {}
    for module, path in modules.items():
        code = path.read_text(encoding="utf-8")
        for line, target, top_level, names in dlforge_imports(code, module, path.name == "__init__.py"):
            submodules = [f"{target}.{name}" if f"{target}.{name}" in modules else target for name in names]
            for named in submodules or [target]:
                parents = [".".join(named.split(".")[:n]) for n in range(2, named.count(".") + 1)]
                for imported in [p for p in parents if not module.startswith(p + ".")] + [named]:
                    if top_level and imported in modules and imported != module:
                        graph[module].add(imported)
                        lines.setdefault((module, imported),
                                         f"{modules[module].relative_to(SRC)}:{line} -> {imported}")

    in_cycles = sorted(text for (a, b), text in lines.items() if a in reachable(graph, b))
    assert not in_cycles, "module-level imports on a cycle:\n" + "\n".join(in_cycles)


def test_the_parser_sees_every_kind_of_import():
    """The checks above are only as good as `dlforge_imports`: relative (in a package's __init__ and in a plain
    module), absolute, function-level and importlib imports are all found; the root's __version__ is not an edge."""
    source = """
import json
import dlforge.hub
from .. import __version__
from ..models.gan import GAN
from . import layerwise
from .distill import Distiller
def train():
    from dlforge.data.images import ImageSet
    return importlib.import_module(f"dlforge.models.{name}")
"""
    in_module = {(t, top) for _, t, top, _ in dlforge_imports(source, "dlforge.training.images", is_package=False)}
    assert in_module == {("dlforge.hub", True), ("dlforge.models.gan", True), ("dlforge.training", True),
                         ("dlforge.training.distill", True), ("dlforge.data.images", False), ("dlforge.models", False)}
    names = {t: n for _, t, _, n in dlforge_imports(source, "dlforge.training.images", is_package=False)}
    assert names["dlforge.training"] == ("layerwise",) and names["dlforge.hub"] == ()
    in_init = {t for _, t, _, _ in dlforge_imports(source, "dlforge.training", is_package=True)}
    assert {"dlforge.models.gan", "dlforge.training.distill"} <= in_init
    assert package_of("dlforge.training.images") == "training" and package_of("dlforge.errors") == "errors"
    assert package_of("dlforge") == package_of("dlforge.__main__") == ""


def loaded_by(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after `statement` that it did not hold before."""
    code = ("import sys; before = set(sys.modules); " + statement
            + "; print('\\n'.join(sorted(set(sys.modules) - before)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(result.stdout.split())


def test_import_dlforge_loads_no_torch():
    loaded = loaded_by("import dlforge")
    assert "torch" not in loaded and len([m for m in loaded if m.startswith("dlforge")]) <= 3, sorted(loaded)


# what the Trainer never needs: the packages above it, plotting, optional scorers, reference libraries
NOT_FOR_TRAINING = ("dlforge.transfer", "dlforge.pipelines", "dlforge.cli", "matplotlib", "sklearn", "tensorboard",
                    "transformers", "diffusers", "sentence_transformers", "seqeval", "sacrebleu", "rouge_score",
                    "huggingface_hub", "PIL")


def test_import_training_loads_only_what_the_trainer_needs():
    loaded = loaded_by("import torch; import dlforge.training")
    assert sorted(m for m in loaded if m.startswith(NOT_FOR_TRAINING)) == []
