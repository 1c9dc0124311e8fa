"""The gateway's venv on a node holds only Podium's wheel and the requirements stacks/versions.yaml
pins for it: every third-party module the gateway can import (its own modules and the Podium
modules they import, followed through) must come from one of those pins or what they pull in."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import yaml

from podium.render import REPO

SRC = REPO / "src"


def module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_level(tree: ast.Module) -> list[ast.stmt]:
    """The statements that run when the module is imported: not those in function bodies."""
    todo, found = list(tree.body), []
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)  # only type checkers import the body
            continue
        found.append(node)
        todo.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
    return found


def imports_of(path: Path, package: str, everywhere: bool) -> set[str]:
    """What a module imports when it is imported, or also inside its functions (`everywhere`)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree) if everywhere else module_level(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def third_party_imports(start: str) -> dict[str, str]:
    """Top-level third-party module -> the Podium module that imports it, from `start` on."""
    seen: set[str] = set()
    todo = [start] + [f"{start}.{p.stem}" for p in sorted((SRC / start.replace(".", "/")).glob("*.py"))]
    outside: dict[str, str] = {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        todo.extend(name.rsplit(".", n)[0] for n in range(1, name.count(".")))
        path = module_file(name)
        if path is None:
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        # The gateway's own lazy imports run when their feature is on; elsewhere only what
        # importing a module runs is followed.
        for imported in imports_of(path, package, everywhere=name.startswith(start)):
            top = imported.split(".")[0]
            if top == "podium":
                todo.append(imported)
            elif top not in sys.stdlib_module_names and top != "__future__":
                outside.setdefault(top, name)
    return outside


def closure(requirements: list[str]) -> set[str]:
    """The pinned distributions and what they require (as installed here, with the extras each
    pin asks for), normalised."""
    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    def parse(requirement: str) -> tuple[str, set[str]]:
        found = re.match(r"\s*([A-Za-z0-9._-]+)\s*(?:\[([^\]]*)\])?", requirement)
        assert found, requirement
        return norm(found[1]), {norm(e) for e in (found[2] or "").split(",") if e.strip()}

    todo = [parse(r) for r in requirements]
    done: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    while todo:
        name, extras = todo.pop()
        if (name, frozenset(extras)) in done:
            continue
        done.add((name, frozenset(extras)))
        names.add(name)
        try:
            needs = requires(name) or []
        except PackageNotFoundError:
            continue
        for need in needs:
            wanted = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", need)
            if wanted is None or norm(wanted[1]) in extras:
                todo.append(parse(need))
    return names


def test_every_module_the_gateway_imports_comes_from_its_pinned_requirements() -> None:
    versions = yaml.safe_load((REPO / "stacks" / "versions.yaml").read_text(encoding="utf-8"))
    allowed = closure(versions["components"]["gateway"]["requirements"])
    providers = packages_distributions()
    missing = {}
    for module, importer in third_party_imports("podium.services.gateway").items():
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(module, [module])}
        if not dists & allowed:
            missing[module] = importer
    assert not missing, (
        f"the gateway imports {missing} (module: importer), which no pin under "
        "components.gateway.requirements in stacks/versions.yaml installs on a node"
    )


BLOCKER = """
import importlib.abc, sys
allowed = set(sys.argv[1].split(","))

class OnlyTheNodesVenv(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.split(".")[0]
        if (top in sys.stdlib_module_names or top in allowed or top.startswith("_")
                or top == "podium"):
            return None
        raise ModuleNotFoundError(f"No module named {name!r} on a gateway node", name=name)

sys.meta_path.insert(0, OnlyTheNodesVenv())
import podium.services.gateway.__main__, podium.services.gateway.server, podium.services.gateway.app
import podium.services.gateway.console, podium.services.gateway.grpc_service
print("imported")
"""


def test_the_gateway_and_its_console_import_with_only_the_nodes_modules() -> None:
    import subprocess

    versions = yaml.safe_load((REPO / "stacks" / "versions.yaml").read_text(encoding="utf-8"))
    allowed = closure(versions["components"]["gateway"]["requirements"])
    modules = {module for module, dists in packages_distributions().items()
               if {re.sub(r"[-_.]+", "-", d).lower() for d in dists} & allowed}
    done = subprocess.run([sys.executable, "-c", BLOCKER, ",".join(sorted(modules))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr[-3000:]
