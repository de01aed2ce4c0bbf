"""The declared public surface: every public module's `__all__` is exactly what it exports.

A module is public when no component of its dotted path starts with ``_`` (``replaykit.errors``
is, ``replaykit._format.store`` is not). Each one declares ``__all__``; every declared name
exists; and every other name it defines or imports is underscored, a module, or a typing
helper, so nothing becomes public by accident. The top level's names are all documented.
"""

from __future__ import annotations
import __future__

import collections.abc
import importlib
import pathlib
import pkgutil
import subprocess
import sys
import types
import typing

import pytest

import replaykit


def _public_modules() -> list[str]:
    # Descend only into public packages: everything below a private one is private.
    names, todo = [], [replaykit]
    while todo:
        package = todo.pop()
        names.append(package.__name__)
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            if info.name.rsplit(".", 1)[1].startswith("_"):
                continue
            if info.ispkg:
                todo.append(importlib.import_module(info.name))
            else:
                names.append(info.name)
    return sorted(names)


def test_public_modules_are_the_declared_ones() -> None:
    # __main__ starts with "_", so it is not public; a new public module must be added here
    # on purpose.
    assert _public_modules() == [
        "replaykit",
        "replaykit.cli",
        "replaykit.determinism",
        "replaykit.errors",
        "replaykit.integrations",
        "replaykit.integrations.minari",
        "replaykit.integrations.sb3",
        "replaykit.provenance",
        "replaykit.pytest_plugin",
        "replaykit.testing",
    ]


def _is_typing_helper(name: str, value: object) -> bool:
    if isinstance(value, __future__._Feature):  # from __future__ import annotations
        return True
    return any(getattr(m, name, None) is value for m in (typing, collections.abc))


def undeclared_public_names(module: types.ModuleType) -> list[str]:
    """Names a module defines or imports that are public-looking but missing from __all__."""
    declared = set(getattr(module, "__all__", ()))
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and not _is_typing_helper(name, value)
        and name not in declared
    )


@pytest.mark.parametrize("name", _public_modules())
def test_public_module_declares_exactly_its_public_names(name: str) -> None:
    module = importlib.import_module(name)
    if name == "replaykit":
        for attr in replaykit.__all__:  # load every lazy name, so vars() holds them all
            getattr(replaykit, attr)
    assert hasattr(module, "__all__"), f"{name} defines no __all__"
    assert len(module.__all__) == len(set(module.__all__)), f"{name}.__all__ repeats a name"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what {name} does not define: {missing}"
    extra = undeclared_public_names(module)
    assert not extra, f"{name} has public names not in __all__ (declare or underscore): {extra}"


def test_undeclared_name_check_catches_a_leak() -> None:
    # The check itself must fail on a leaked name: an import, a helper, a constant.
    leaky = types.ModuleType("leaky")
    leaky.__dict__.update(
        __all__=["api"],
        annotations=__future__.annotations,
        Any=typing.Any,
        Callable=collections.abc.Callable,
        subprocess=subprocess,
        _private=1,
        api=len,
        LIMIT=3,  # a constant
        Path=pathlib.Path,  # an imported class
        helper=lambda: None,  # a function
    )
    assert undeclared_public_names(leaky) == ["LIMIT", "Path", "helper"]


def test_all_names_exist_and_are_documented() -> None:
    assert len(replaykit.__all__) == len(set(replaykit.__all__))
    for name in replaykit.__all__:
        obj = getattr(replaykit, name)
        if name != "__version__":
            assert obj.__doc__, f"replaykit.{name} has no docstring"


def test_no_public_name_is_left_out_of_all() -> None:
    public = {
        n
        for n, v in vars(replaykit).items()
        if not n.startswith("_")
        and not isinstance(v, type(sys))
        and n not in {"annotations", "Any"}
    }
    assert public <= set(replaykit.__all__), sorted(public - set(replaykit.__all__))


@pytest.mark.integration
def test_import_does_not_load_torch() -> None:
    # Reading, diffing and checking files must not pay for torch (seconds and ~200 MB).
    code = "import sys, replaykit; replaykit.diff_recordings; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.integration
def test_import_loads_no_torch_and_no_test_envs() -> None:
    code = (
        "import replaykit, sys; "
        "print(sorted(m for m in sys.modules if m.startswith(('torch','replaykit_envs'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
