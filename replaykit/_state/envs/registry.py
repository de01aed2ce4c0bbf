"""Env-state adapters: the protocol and the type-keyed registry.

An *env adapter* captures and restores the state of one unwrapped env class; a
*wrapper adapter* does the same for one wrapper layer. Both return and accept a
*state tree* (see :mod:`replaykit._format.tree`): nested ``dict``/``list``/``tuple``
of ``numpy`` arrays, ``torch`` tensors and JSON scalars. Dispatch follows the
class MRO through :func:`functools.singledispatch`, so registering an adapter
for a base class covers its subclasses unless a subclass registers its own.

Example:
    >>> import gymnasium as gym
    >>> from replaykit._state.envs import find_env_adapter
    >>> env = gym.make("CartPole-v1")
    >>> find_env_adapter(env.unwrapped).name
    'classic_control.CartPole'
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Protocol, runtime_checkable

from replaykit._state.envs import families

__all__ = [
    "STATELESS",
    "EnvAdapter",
    "WrapperAdapter",
    "find_env_adapter",
    "find_wrapper_adapter",
    "register_env_adapter",
    "register_stateless_wrapper",
    "register_wrapper_adapter",
]


@runtime_checkable
class EnvAdapter(Protocol):
    """Captures and restores the complete state of an unwrapped env.

    ``capture`` must return everything the env's next ``step`` depends on
    (including its ``np_random`` when the adapter owns it), as a state tree
    that shares no memory with the env. ``restore`` must leave the env in a
    state where the next ``step`` gives bit-identical results.
    """

    name: ClassVar[str]

    def capture(self, env: Any) -> Any: ...

    def restore(self, env: Any, state: Any) -> None: ...


@runtime_checkable
class WrapperAdapter(Protocol):
    """Captures and restores the state held by one wrapper layer (not the env below it)."""

    name: ClassVar[str]

    def capture(self, wrapper: Any) -> Any: ...

    def restore(self, wrapper: Any, state: Any) -> None: ...


class _Stateless:
    """Adapter for wrappers that hold no state the next step depends on."""

    name: ClassVar[str] = "stateless"

    def capture(self, wrapper: Any) -> Any:
        return {}

    def restore(self, wrapper: Any, state: Any) -> None:
        return None


STATELESS = _Stateless()


@functools.singledispatch
def _env_adapter_for(env: object) -> EnvAdapter | None:
    return None


@functools.singledispatch
def _wrapper_adapter_for(wrapper: object) -> WrapperAdapter | None:
    return None


def register_env_adapter(env_type: type, adapter: EnvAdapter) -> None:
    """Use ``adapter`` for unwrapped envs of ``env_type`` (and subclasses without their own).

    Args:
        env_type: the env class, e.g. ``gymnasium.envs.classic_control.CartPoleEnv``.
        adapter: an object following :class:`EnvAdapter`.

    Example:
        >>> class MyEnvAdapter:
        ...     name = "mine.MyEnv"
        ...     def capture(self, env): return {"pos": env.pos.copy()}
        ...     def restore(self, env, state): env.pos[...] = state["pos"]
        >>> # register_env_adapter(MyEnv, MyEnvAdapter())
    """
    _register_builtins()  # so a built-in adapter registered later never replaces this one
    _env_adapter_for.register(env_type)(lambda env, _a=adapter: _a)


def register_wrapper_adapter(wrapper_type: type, adapter: WrapperAdapter) -> None:
    """Use ``adapter`` for wrapper layers of ``wrapper_type`` (and subclasses without their own)."""
    _register_builtins()
    _wrapper_adapter_for.register(wrapper_type)(lambda w, _a=adapter: _a)


def register_stateless_wrapper(wrapper_type: type) -> None:
    """Declare that ``wrapper_type`` holds no state the next step depends on."""
    register_wrapper_adapter(wrapper_type, STATELESS)


# The built-in adapters register at the first use of the registry, and an optional family's
# adapters once its own module is imported (the caller built such an env), so importing
# replaykit never imports gymnasium's envs, mujoco or ale_py. Both lists come from the fixed
# table in families.py; no module name is ever read from a file.
_registered: set[str] = set()  # "builtins" once the built-in adapters are registered
_LAZY: dict[str, str] = families.lazy_adapter_modules()


def _register_builtins() -> None:
    if "builtins" in _registered:
        return
    _registered.add("builtins")  # first: the adapter modules call register_* as they import
    import importlib

    for module in families.eager_adapter_modules():
        importlib.import_module(module)


def _register_lazy() -> None:
    import importlib
    import sys

    for trigger, module in list(_LAZY.items()):
        if trigger in sys.modules:
            del _LAZY[trigger]
            importlib.import_module(module).register()


def find_env_adapter(env: Any) -> EnvAdapter | None:
    """Return the adapter registered for ``type(env)`` (by MRO), or ``None``."""
    _register_builtins()
    if _LAZY:
        _register_lazy()
    return _env_adapter_for(env)


def find_wrapper_adapter(wrapper: Any) -> WrapperAdapter | None:
    """Return the adapter registered for ``type(wrapper)`` (by MRO), or ``None``.

    Note that ``gymnasium.Wrapper`` itself has no adapter: an unknown wrapper
    subclass is *not* assumed stateless.
    """
    _register_builtins()
    return _wrapper_adapter_for(wrapper)
