"""The shape of the code base, checked: which way the top-level packages depend on each other,
that every exception sits in its package's one tree, and that modules stay small enough to read
or say why they are not."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Each top-level package and the project packages it may import. The order is the layering:
# the protocol at the bottom, the app shell and the benchmarks on top. A package not named
# here may not be imported by any other.
ALLOWED: dict[str, set[str]] = {
    "firmware_protocols": set(),
    "mqtt_link": {"firmware_protocols"},
    "edge_agent": {"firmware_protocols", "mqtt_link"},
    "fleet_server": {"firmware_protocols", "mqtt_link"},
    "payment_bridge": {"firmware_protocols", "mqtt_link", "fleet_server"},
    "simulators": {"firmware_protocols", "mqtt_link", "edge_agent", "fleet_server", "payment_bridge"},
    "haodian": {"firmware_protocols", "mqtt_link", "edge_agent", "fleet_server", "payment_bridge", "simulators"},
    "bench": {
        "firmware_protocols",
        "mqtt_link",
        "edge_agent",
        "fleet_server",
        "payment_bridge",
        "simulators",
        "haodian",
    },
}
SERVER_PACKAGES = ("fleet_server", "payment_bridge")

# The root of each package's error tree.
ROOTS = {
    "firmware_protocols": "firmware_protocols.errors.ProtocolError",
    "mqtt_link": "mqtt_link.errors.LinkError",
    "edge_agent": "edge_agent.errors.AgentError",
    "fleet_server": "fleet_server.errors.FleetError",
    "payment_bridge": "payment_bridge.errors.BridgeError",
    "simulators": "simulators.errors.SimulatorError",
    "haodian": "haodian.errors.HaodianError",
    "bench": "bench.env.BenchError",
}

MAX_LINES = 400
LONG_REASON = re.compile(r"longer than 400 lines because", re.IGNORECASE)


def modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def imported_packages(path: Path) -> set[str]:
    """The top-level project packages a module imports, anywhere in it (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(ALLOWED)


def graph() -> dict[str, set[str]]:
    return {package: set().union(*(imported_packages(p) for p in modules(package))) - {package} for package in ALLOWED}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_packages_below_it(package):
    offenders = {
        f"{path.relative_to(ROOT)} imports {other}"
        for path in modules(package)
        for other in imported_packages(path) - ALLOWED[package] - {package}
    }
    assert not offenders, sorted(offenders)


@pytest.mark.parametrize("package", SERVER_PACKAGES)
def test_no_server_package_imports_the_device_runtime(package):
    assert "edge_agent" not in graph()[package]


def test_the_top_level_packages_form_no_cycle():
    edges = graph()
    done: set[str] = set()

    def visit(package: str, path: list[str]) -> None:
        assert package not in path, " -> ".join([*path, package])
        if package in done:
            return
        for other in sorted(edges[package]):
            visit(other, [*path, package])
        done.add(package)

    for package in sorted(edges):
        visit(package, [])


def test_the_import_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from edge_agent.agent import EdgeAgent  # noqa\n    import haodian.cli\n")
    assert imported_packages(module) == {"edge_agent", "haodian"}


def exception_classes(package: str) -> list[type[BaseException]]:
    found = []
    top = importlib.import_module(package)
    for info in pkgutil.walk_packages(top.__path__, prefix=f"{package}."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found.extend(
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == info.name
        )
    return found


def root_of(package: str) -> type[BaseException]:
    module, _, name = ROOTS[package].rpartition(".")
    root: type[BaseException] = getattr(importlib.import_module(module), name)
    return root


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_every_exception_of_a_package_is_in_its_one_tree(package):
    root = root_of(package)
    strays = [f"{cls.__module__}.{cls.__qualname__}" for cls in exception_classes(package) if not issubclass(cls, root)]
    assert not strays, f"not under {root.__name__}: {strays}"


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_every_error_of_a_tree_is_drawn_in_its_docstring(package):
    root = root_of(package)
    drawn = inspect.getdoc(importlib.import_module(root.__module__)) or ""
    public = [cls.__name__ for cls in exception_classes(package) if not cls.__name__.startswith("_")]
    missing = [name for name in public if name not in drawn]
    assert not missing, f"{root.__module__}'s docstring does not draw {missing}"


@pytest.mark.parametrize("package", [p for p in ALLOWED if p != "bench"])
def test_modules_stay_under_400_lines_or_say_why(package):
    long = []
    for path in modules(package):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES and not LONG_REASON.search(ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not long, long
