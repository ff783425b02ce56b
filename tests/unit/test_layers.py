"""The import rules of docs/architecture.md, read from the source with `ast` (lazy imports inside functions count):
no import circles between modules, no room importing a room it may not (an upward import), and no module
reaching for another module's private (_underscored) names.

`python tests/unit/test_layers.py` lists what breaks the rules."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shardtune", "hydra_plugins")

# Which room each module is in: the longest matching prefix.
ROOM_OF = {
    "shardtune": "base", "shardtune.errors": "base", "shardtune.paths": "base", "shardtune.run_dir": "base",
    "shardtune.precision": "base", "shardtune.quiet": "base",
    "shardtune.config": "config", "shardtune.strategy_registry": "config", "shardtune.conf": "config",
    "shardtune.cluster": "cluster",
    "shardtune.data": "data",
    "shardtune.trainer": "trainer",
    "shardtune.finished_run": "export", "shardtune.export": "export",
    "shardtune.evaluation": "evaluation",
    "shardtune.launcher": "launcher",
    "shardtune.sweep": "sweep",
    "shardtune.cli": "cli",
    "hydra_plugins": "plugins",
}
# The rooms each room may import besides itself; everything else points upward (or sideways).
MAY_IMPORT = {
    "base": set(),
    "config": {"base"},
    "cluster": {"base", "config"},
    "data": {"base", "config", "cluster"},
    "trainer": {"base", "config", "cluster", "data"},
    "export": {"base", "config", "data", "trainer"},
    "evaluation": {"base", "config", "data", "trainer", "export"},
    "launcher": {"base", "config", "cluster", "data", "trainer"},
    "sweep": {"base", "config", "cluster", "data", "trainer", "launcher"},
    "plugins": {"base", "config", "sweep"},
    "cli": {"base", "config", "cluster", "data", "trainer", "export", "evaluation", "launcher", "sweep"},
}


def find_modules() -> dict:
    """{dotted module name: file}."""
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict) -> set:
    """The project modules `name` imports anywhere in its file."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `from x import function` names the module x
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def private_imports() -> list:
    """(module, 'from X import _name') for every private name imported from another project module."""
    found = []
    for name, path in sorted(find_modules().items()):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(PACKAGES)):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append((name, f"from {'.' * node.level}{node.module or ''} import {alias.name}"))
    return found


def import_graph() -> dict:
    modules = find_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def room_of(module: str) -> str:
    prefix = max((p for p in ROOM_OF if module == p or module.startswith(p + ".")), key=len)
    return ROOM_OF[prefix]


def circles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict) -> list:
    """(module, imported module, 'room -> room') for every import the rules do not allow."""
    wrong = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            source_room, target_room = room_of(module), room_of(target)
            if target_room != source_room and target_room not in MAY_IMPORT[source_room]:
                wrong.append((module, target, f"{source_room} -> {target_room}"))
    return wrong


def test_every_module_is_in_a_room_with_rules():
    assert set(ROOM_OF.values()) == set(MAY_IMPORT)
    graph = import_graph()
    assert "shardtune.trainer.trainer" in graph and "hydra_plugins.shardtune_sweeps.launcher" in graph
    assert {room_of(module) for module in graph} == set(MAY_IMPORT)


def test_the_checks_see_a_circle_and_an_upward_import():
    graph = {"shardtune.data.a": {"shardtune.data.b"}, "shardtune.data.b": {"shardtune.data.a", "shardtune.cli"},
             "shardtune.cli": set()}
    assert circles(graph) == [["shardtune.data.a", "shardtune.data.b"]]
    assert upward_imports(graph) == [("shardtune.data.b", "shardtune.cli", "data -> cli")]


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_no_upward_imports():
    assert upward_imports(import_graph()) == []


def test_no_private_names_imported_across_modules():
    assert private_imports() == []


if __name__ == "__main__":
    graph = import_graph()
    for component in circles(graph):
        print(f"circle of {len(component)}: {', '.join(component)}")
    for module, target, rooms in upward_imports(graph):
        print(f"upward import ({rooms}): {module} imports {target}")
    for module, statement in private_imports():
        print(f"private name: {module}: {statement}")
