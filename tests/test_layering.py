"""The package's shape holds: data flows one way and modules meet only through public names.

surfaces (cli, pytest_plugin, testing) -> _scale -> _session -> _analysis / _state -> _format.
Only ``_format`` knows HDF5; no module imports another module's private names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import replaykit

ROOT = Path(replaykit.__file__).parent

# Which parts of the package each part may import (besides errors and itself).
_ALLOWED: dict[str, set[str]] = {
    "_format": set(),
    "_state": {"_format"},
    "_analysis": {"_format", "_state"},
    "_session": {"_format", "_state", "_analysis"},
    "integrations": {"_format", "_state", "_analysis", "_session"},
    "_scale": {"_format", "_state", "_analysis", "_session"},
}
_SURFACES = {"cli", "pytest_plugin", "testing", "__main__"}
_SHARED = {"errors", "determinism", "provenance", "__init__"}


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for py in sorted(ROOT.rglob("*.py")):
        rel = py.relative_to(ROOT).with_suffix("").as_posix()
        out.append((rel, ast.parse(py.read_text(), filename=str(py))))
    return out


def _part(module: str) -> str:
    """``replaykit._state.envs.chain`` -> ``_state``; ``replaykit.cli`` -> ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(tree: ast.Module) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every ``import replaykit...`` / ``from replaykit... import``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "replaykit" or node.module.startswith("replaykit."):
                found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("replaykit."):
                    found.append((node.lineno, alias.name, []))
    return found


def test_no_private_name_is_imported_across_modules() -> None:
    hits = []
    for rel, tree in _modules():
        for line, module, names in _imports(tree):
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    hits.append(f"{rel}.py:{line}: from {module} import {name}")
    assert not hits, "\n".join(hits)


def test_no_private_attribute_of_another_module_is_used() -> None:
    hits = []
    for rel, tree in _modules():
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("replaykit"):
                aliases |= {a.asname or a.name for a in node.names}
            elif isinstance(node, ast.Import):
                aliases |= {
                    a.asname or a.name.split(".")[0]
                    for a in node.names
                    if a.name.startswith("replaykit")
                }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                hits.append(f"{rel}.py:{node.lineno}: {node.value.id}.{node.attr}")
    assert not hits, "\n".join(hits)


def test_data_flows_one_way() -> None:
    hits = []
    for rel, tree in _modules():
        here = rel.split("/")[0]
        if here in _SURFACES or here in _SHARED:
            continue
        allowed = _ALLOWED[here] | {here, "errors", "__init__"}
        if here != "_format":
            allowed |= {"determinism", "provenance"}
        for line, module, names in _imports(tree):
            target = _part(module)
            if target == "__init__":  # `from replaykit import x`: x must be a shared module
                bad = [n for n in names if n not in _SHARED and n != "__version__"]
                if bad:
                    hits.append(f"{rel}.py:{line}: from replaykit import {', '.join(bad)}")
                continue
            if target not in allowed:
                hits.append(f"{rel}.py:{line}: {here} imports {module}")
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("banned", ["h5py"])
def test_only_the_format_part_imports_hdf5(banned: str) -> None:
    hits = []
    for rel, tree in _modules():
        if rel.startswith("_format/"):
            continue
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == banned or n.startswith(banned + ".") for n in names):
                hits.append(f"{rel}.py:{node.lineno}")
    assert not hits, "\n".join(hits)


def test_the_checks_catch_what_they_look_for() -> None:
    tree = ast.parse("from replaykit._format.store import _digest\nimport replaykit._session.x\n")
    found = _imports(tree)
    assert found[0] == (1, "replaykit._format.store", ["_digest"])
    assert _part(found[1][1]) == "_session"
