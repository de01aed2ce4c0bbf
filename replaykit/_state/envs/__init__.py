"""Capture and restore the complete state of gymnasium envs and their wrapper chains.

Importing this package registers the built-in adapters: gymnasium's
classic-control and toy-text envs and gymnasium's stock wrappers (MuJoCo and
Atari adapters register when those packages are in use).

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

from replaykit._state.envs import classic_control, wrappers
from replaykit._state.envs.chain import (
    CAPTURE_UNKNOWN_WRAPPER,
    capture_chain,
    capture_wrappers_and_rngs,
    chain_layers,
    restore_chain,
    restore_wrappers_and_rngs,
)
from replaykit._state.envs.generators import capture_generator, restore_generator
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
    "capture_generator",
    "capture_wrappers_and_rngs",
    "chain_layers",
    "find_env_adapter",
    "find_wrapper_adapter",
    "register_env_adapter",
    "register_stateless_wrapper",
    "register_wrapper_adapter",
    "restore_chain",
    "restore_generator",
    "restore_wrappers_and_rngs",
]

del classic_control, wrappers
