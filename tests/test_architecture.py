"""The import graphs of ``pipeline/`` and of ``rewards/``'s sub-packages keep the layering docs/ARCHITECTURE.md draws.

Read with ``ast`` (nothing is imported): every ``import`` statement of every
module, function-level ones included, since a lazy import is still a
dependency, and every string that names a module of ``pipeline`` (an import
by name, ``"pipeline.methods.rise.method:RiseMethod"``, or a module a child
process runs). Imports under ``if TYPE_CHECKING:`` run only for type
checkers, so they do not count for the layering; they do count for the rule
that keeps methods' classes inside ``pipeline/methods/`` and for the config's
own modules, which import each other without a circle.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"
# The method registry: the one module that imports by name, and the one import that points upward (the config
# parses a run's method section, so it loads each method's class; docs/ARCHITECTURE.md, "The method registry").
REGISTRY = "pipeline.config.methods"
MODULE_NAME = re.compile(r"^pipeline(?:\.\w+)+(?::\w+)?$")
IMPORTS_BY_NAME = {"import_module", "resolve_name", "__import__"}

# Low to high: a sub-package may import its own layer and the layers before it, never one after it.
LAYERS: list[set[str]] = [
    {"system"},
    {"tasks"},
    {"config"},
    {"run"},
    {"tracking"},
    {"engine"},
    {"rollouts"},
    {"training"},
    {"eval"},
    {"methods"},
    {"runner", "export"},
    {"cli"},
]
LAYER_OF = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PIPELINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def subpackage(module: str) -> str | None:
    """``pipeline.engine.backends`` -> ``engine``; the ``pipeline`` package itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "pipeline" else None


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    hidden = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return hidden


def imports(path: Path, top_level_only: bool = False) -> list[tuple[str, list[str], bool]]:
    """(imported module, names imported from it, whether only for type checking) of each import in ``path``,
    strings that name a module of ``pipeline`` included; ``top_level_only``: those the module runs when imported
    (at its top, or under ``if TYPE_CHECKING:``), not those inside its functions."""
    tree = _tree(path)
    hidden = _type_checking_nodes(tree)
    found = []
    for node in _top_level_nodes(tree) if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], id(node) in hidden) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names], id(node) in hidden))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_NAME.match(node.value):
            module, _, name = node.value.partition(":")
            found.append((module, [name] if name else [], id(node) in hidden))
    return found


@functools.cache
def _tree(path: Path) -> ast.Module:
    """``path``'s syntax tree, parsed once for all the tests (none changes a tree)."""
    return ast.parse(path.read_text(encoding="utf-8"))


def _top_level_nodes(tree: ast.Module) -> list[ast.AST]:
    """The nodes outside every function body: what runs when the module is imported."""
    functions = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    return [node for node in ast.walk(tree) if id(node) not in functions]


def imports_by_name(path: Path) -> list[str]:
    """The calls in ``path`` that import a module whose name is only known when they run."""
    return [
        ast.unparse(node.func)
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.Call) and ast.unparse(node.func).rpartition(".")[2] in IMPORTS_BY_NAME
    ]


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PIPELINE.rglob("*.py"))}


@functools.cache
def package_edges() -> dict[tuple[str, str], str]:
    """(importing sub-package, imported sub-package) -> one module that does it, for the runtime imports."""
    edges = {}
    for name, path in modules().items():
        source = subpackage(name)
        for target, _, type_only in imports(path):
            imported = subpackage(target)
            if source and imported and imported != source and not type_only and not _registered(name, target):
                edges.setdefault((source, imported), f"{name} imports {target}")
    return edges


def _registered(module: str, target: str) -> bool:
    """Whether ``module`` is the registry and ``target`` a method's module: the one import allowed upward."""
    return module == REGISTRY and target.startswith("pipeline.methods.")


def test_every_subpackage_has_a_layer() -> None:
    found = {subpackage(name) for name in modules()} - {None}
    assert found == set(LAYER_OF), f"place new sub-packages in LAYERS: {sorted(found ^ set(LAYER_OF))}"


def test_imports_run_downward_only() -> None:
    upward = [why for (source, target), why in package_edges().items() if LAYER_OF[target] > LAYER_OF[source]]
    assert upward == []


def test_no_cycle_between_subpackages() -> None:
    graph: dict[str, set[str]] = {}
    for source, target in package_edges():
        graph.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = [name for name in graph if reaches(name, name, {name})]
    assert cycles == []


def test_only_the_registry_imports_by_name() -> None:
    offenders = {
        name: calls for name, path in modules().items() if name != REGISTRY and (calls := imports_by_name(path))
    }
    assert offenders == {}


def test_an_import_by_name_counts_as_an_import(tmp_path: Path) -> None:
    module = tmp_path / "worker.py"
    module.write_text(
        'import pkgutil\n\ndef main():\n    pkgutil.resolve_name("pipeline.methods.rise.training:train")\n'
    )
    assert ("pipeline.methods.rise.training", ["train"], False) in imports(module)
    assert imports_by_name(module) == ["pkgutil.resolve_name"]


def test_the_registry_names_only_methods_classes() -> None:
    targets = {target for target, _, _ in imports(modules()[REGISTRY]) if target.startswith("pipeline.methods")}
    assert targets == set(method_config_classes())


def test_a_methods_class_imports_only_the_config_when_loaded() -> None:
    """The config loads each method's class while it builds its ``method`` union, before it is itself loaded: a
    method's module, and what it imports, may load no module that needs the config's (its stages and its
    training import them inside functions)."""
    loaded = modules()

    def light(target: str) -> bool:
        """A config module other than settings, or a module whose own top-level imports are all light."""
        if subpackage(target) == "config":
            return target != "pipeline.config.settings"
        return target in loaded and all(
            type_only or not subpackage(inner) or light(inner)
            for inner, _, type_only in imports(loaded[target], top_level_only=True)
        )

    offenders = []
    for name in method_config_classes():
        for target, _, type_only in imports(loaded[name], top_level_only=True):
            if subpackage(target) and not type_only and not light(target) and target != "pipeline.methods.base":
                offenders.append(f"{name} imports {target}")
    for target, _, type_only in imports(loaded["pipeline.methods.base"], top_level_only=True):
        if subpackage(target) and not type_only and target != "pipeline.config.sections":
            offenders.append(f"pipeline.methods.base imports {target}")
    assert offenders == []


def test_no_circle_between_the_configs_modules() -> None:
    """Type-only imports count here: the config's modules form layers of their own, settings (the whole config) on
    top."""
    graph: dict[str, set[str]] = {}
    for name, path in modules().items():
        if name.startswith("pipeline.config."):
            targets = {target for target, _, _ in imports(path, top_level_only=True)}
            graph[name] = {target for target in targets if target.startswith("pipeline.config.")} - {name}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in graph.get(start, ())
        )

    assert [name for name in graph if reaches(name, name, {name})] == []


def method_config_classes() -> dict[str, set[str]]:
    """Each method's module -> the classes it defines."""
    found = {}
    for path in sorted((PIPELINE / "methods").glob("*/method.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found[module_name(path)] = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    return found


def test_methods_declare_their_class() -> None:
    assert method_config_classes() == {
        "pipeline.methods.rise.method": {"RiseMethod"},
        "pipeline.methods.exit.method": {"ExitMethod"},
    }


def test_nothing_outside_methods_imports_a_method_class() -> None:
    configs = method_config_classes()
    class_names = set().union(*configs.values())
    offenders = []
    for name, path in modules().items():
        if name.startswith("pipeline.methods.") or name == REGISTRY:
            continue
        for target, names, _ in imports(path):
            if target in configs or target.startswith("pipeline.methods") and class_names & set(names):
                offenders.append(f"{name} imports {target} {names}")
    assert offenders == []


REWARDS = PIPELINE.parent / "rewards"

# What each rewards sub-package may import from rewards/ besides itself: graders -> code -> sandbox, never back.
REWARDS_ALLOWED = {
    "code": {"rewards.base", "rewards.python_ast", "rewards.sandbox"},
    "sandbox": set(),
}


def rewards_imports(path: Path) -> list[str]:
    """The ``rewards`` modules ``path`` imports (``from rewards import x`` counts as ``rewards.x``)."""
    found = []
    for target, names, _ in imports(path):
        if target == "rewards":
            found += [f"rewards.{name}" for name in names]
        elif target.startswith("rewards."):
            found.append(target)
    return found


def test_rewards_subpackages_import_downward_only() -> None:
    offenders = [
        f"{path.relative_to(REWARDS.parent)} imports {target}"
        for package, allowed in REWARDS_ALLOWED.items()
        for path in sorted((REWARDS / package).rglob("*.py"))
        for target in rewards_imports(path)
        if ".".join(target.split(".")[:2]) not in allowed | {f"rewards.{package}"}
    ]
    assert offenders == []
