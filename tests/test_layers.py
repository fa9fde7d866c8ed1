"""The package's layers: the import graph of ``transcoder`` (parsed, not imported) has no cycle, and no
module imports from a higher layer, except the trainer driving its tasks (``training`` -> ``tasks``).

Layers, bottom to top: utils/ + codes.py < models/ < losses/ < audio/ < data/ < evaluation/ < training/
< tasks/ < streaming.py < release/ < api.py < encode_corpus.py. Imports inside ``if TYPE_CHECKING:`` blocks are
ignored (they never run); imports inside functions count. Importing ``a.b.c`` from outside package ``a.b`` also runs
``a/b/__init__.py``, so that counts as an import of the package too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "transcoder"
LAYERS = ["utils", "models", "losses", "audio", "data", "evaluation", "training", "tasks", "streaming", "release",
          "api", "encode_corpus"]
#: Files placed in a layer other than their folder's name.
# transcoder/codes*.py sit at the bottom; transcoder/__init__.py re-exports the API
FILE_LAYERS = {"codes": "utils", "codes_check": "utils", "codes_verify": "utils", "codes_tokens": "utils",
               "__init__": "api"}
#: The one allowed upward arrow: the trainer looks up its task and drives it.
ALLOWED_UP = {("training", "tasks")}
#: Edges (importing file, imported file) still to be removed, each with the change that removes it.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()  # (importer, imported) edges allowed to point upward


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, packages under their own name (``transcoder.tasks`` -> its __init__)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                    isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                for statement in node.body:
                    skip.update(id(sub) for sub in ast.walk(statement))
    return skip


def _imported_names(path: Path) -> set[str]:
    """Absolute dotted names a file imports at run time (``from m import n`` gives ``m`` and ``m.n``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = _type_checking_nodes(tree)
    package_parts = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = list(package_parts[:len(package_parts) - node.level + 1])
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] == PACKAGE.name}


def import_graph() -> dict[Path, set[Path]]:
    """File -> the package files its run-time imports execute (the module and its parent packages)."""
    modules = _module_files()
    graph: dict[Path, set[Path]] = {}
    for path in modules.values():
        targets: set[Path] = set()
        for name in _imported_names(path):
            parts = name.split(".")
            for end in range(2, len(parts) + 1):  # the packages on the way, then the module itself
                target = modules.get(".".join(parts[:end]))
                # a package's own modules importing each other through it is Python's re-export idiom,
                # not a dependency between files: the package __init__ counts for outside importers only
                inside = target is not None and target.name == "__init__.py" and end < len(parts) \
                    and path.is_relative_to(target.parent)
                if target is not None and not inside:
                    targets.add(target)
        targets.discard(path)
        graph[path] = targets
    return graph


def layer_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    head = parts[0]
    layer = FILE_LAYERS.get(head, head) if len(parts) == 1 else head
    assert layer in LAYERS, f"{path}: not in any layer; place it in LAYERS or FILE_LAYERS"
    return layer


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


def _cycles(graph: dict[Path, set[Path]]) -> list[list[str]]:
    """Strongly connected components with more than one file (Tarjan, iterative)."""
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    on_stack: set[Path] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(_name(member))
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_parser_sees_the_package() -> None:
    graph = import_graph()
    assert len(graph) > 50
    api = PACKAGE / "api.py"
    assert PACKAGE / "models" / "build.py" in graph[api]  # a plain import
    # an import under TYPE_CHECKING is not an edge: tasks/tokenizer.py names the step state only for typing
    assert PACKAGE / "training" / "step.py" not in graph[PACKAGE / "tasks" / "tokenizer.py"]
    assert "StepState" in (PACKAGE / "tasks" / "tokenizer.py").read_text()


def test_no_import_cycle() -> None:
    assert _cycles(import_graph()) == []


def test_no_import_from_a_higher_layer() -> None:
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path, targets in import_graph().items():
        for target in targets:
            low, high = layer_of(path), layer_of(target)
            if rank[high] <= rank[low] or (low, high) in ALLOWED_UP:
                continue
            if (_name(path), _name(target)) in KNOWN_EXCEPTIONS:
                continue
            upward.append(f"{_name(path)} ({low}) -> {_name(target)} ({high})")
    assert sorted(upward) == [], "imports from a higher layer"


def test_api_builds_models_without_tasks_or_training() -> None:
    """The API (and the tasks' shared model building) needs neither the trainer nor a task."""
    graph = import_graph()
    for path in (PACKAGE / "api.py", PACKAGE / "tasks" / "vocoder.py"):
        layers = {layer_of(target) for target in graph[path]}
        names = {_name(target) for target in graph[path]}
        if path.name == "api.py":
            assert not layers & {"tasks", "training"}, names
        else:
            assert "api.py" not in names, names


def test_known_exceptions_still_exist() -> None:
    """An exception whose edge is gone must be deleted from KNOWN_EXCEPTIONS (so it cannot hide a new one)."""
    edges = {(_name(path), _name(target)) for path, targets in import_graph().items() for target in targets}
    assert KNOWN_EXCEPTIONS <= edges, KNOWN_EXCEPTIONS - edges
