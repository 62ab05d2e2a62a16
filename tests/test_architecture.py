"""The import graphs of ``pipeline/`` and of ``rewards/``'s sub-packages keep the layering docs/ARCHITECTURE.md draws.

Read with ``ast`` (nothing is imported): every ``import`` statement of every
module, function-level ones included, since a lazy import is still a
dependency. Imports under ``if TYPE_CHECKING:`` run only for type checkers,
so they do not count for the layering; they do count for the rule that
keeps methods' config classes inside ``pipeline/methods/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"

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


def imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """(imported module, names imported from it, whether only for type checking) of each import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hidden = _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], id(node) in hidden) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names], id(node) in hidden))
    return found


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PIPELINE.rglob("*.py"))}


def package_edges() -> dict[tuple[str, str], str]:
    """(importing sub-package, imported sub-package) -> one module that does it, for the runtime imports."""
    edges = {}
    for name, path in modules().items():
        source = subpackage(name)
        for target, _, type_only in imports(path):
            imported = subpackage(target)
            if source and imported and imported != source and not type_only:
                edges.setdefault((source, imported), f"{name} imports {target}")
    return edges


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


def method_config_classes() -> dict[str, set[str]]:
    """Each method's config module -> the classes it defines."""
    found = {}
    for path in sorted((PIPELINE / "methods").glob("*/config.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found[module_name(path)] = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    return found


def test_methods_declare_their_config_section() -> None:
    assert method_config_classes() == {
        "pipeline.methods.rise.config": {"RiseSection"},
        "pipeline.methods.exit.config": {"ExitSection"},
    }


def test_nothing_outside_methods_imports_a_method_config_class() -> None:
    configs = method_config_classes()
    class_names = set().union(*configs.values())
    offenders = []
    for name, path in modules().items():
        if name.startswith("pipeline.methods."):
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
