"""Capture and restore the complete state of gymnasium envs and their wrapper chains.

The built-in adapters (gymnasium's classic-control and toy-text envs, gymnasium's
stock wrappers) register at the first use of the adapter registry; the MuJoCo and
Atari adapters once those packages are in use. Which family registers what, and
when, is the table in :mod:`replaykit._state.envs.families`. Names load on first
use, so importing this package imports no gymnasium.

Example:
    >>> import gymnasium as gym
    >>> from replaykit._state.envs import capture_chain, restore_chain
    >>> env = gym.make("CartPole-v1")
    >>> _ = env.reset(seed=0)
    >>> tree = capture_chain(env)
    >>> a = env.step(1)[0]
    >>> restore_chain(env, tree)
    >>> bool((env.step(1)[0] == a).all())
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replaykit._state.envs.chain import (
        CAPTURE_UNKNOWN_WRAPPER,
        capture_chain,
        capture_wrappers_and_rngs,
        chain_layers,
        restore_chain,
        restore_wrappers_and_rngs,
        uncapturable_layer,
    )
    from replaykit._state.envs.registry import (
        STATELESS,
        EnvAdapter,
        WrapperAdapter,
        find_env_adapter,
        find_wrapper_adapter,
        register_env_adapter,
        register_stateless_wrapper,
        register_wrapper_adapter,
    )
    from replaykit._state.envs.values import AttrAdapter

__all__ = [
    "CAPTURE_UNKNOWN_WRAPPER",
    "STATELESS",
    "AttrAdapter",
    "EnvAdapter",
    "WrapperAdapter",
    "capture_chain",
    "capture_wrappers_and_rngs",
    "chain_layers",
    "find_env_adapter",
    "find_wrapper_adapter",
    "register_env_adapter",
    "register_stateless_wrapper",
    "register_wrapper_adapter",
    "restore_chain",
    "restore_wrappers_and_rngs",
    "uncapturable_layer",
]


def __getattr__(name: str) -> Any:
    # The names load on first use, so reading the family table (families.py) from
    # provenance or the session code does not import gymnasium.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from replaykit._state.envs import chain, registry, values

    for module in (chain, registry, values):
        globals().update({n: getattr(module, n) for n in __all__ if hasattr(module, n)})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
