"""Small deterministic test envs for replaykit, registered with gymnasium.

Importing this package registers three envs under the ``replaykit`` namespace:

* ``replaykit/SlipperyGrid-v0``: a slippery grid world with discrete actions.
* ``replaykit/Drift-v0``: continuous nonlinear dynamics whose float error accumulates.
* ``replaykit/NestedObs-v0``: nested ``Dict``/``Tuple`` observations and ragged infos.

Each draws from ``self.np_random`` every step, so restoring a snapshot without
the env RNG visibly diverges.

Example:
    >>> import gymnasium as gym
    >>> import replaykit_envs  # noqa: F401
    >>> env = gym.make("replaykit/SlipperyGrid-v0")
    >>> obs, info = env.reset(seed=0)
    >>> int(obs)
    0
"""

from __future__ import annotations

import gymnasium as gym
from replaykit_envs.drift import DriftEnv
from replaykit_envs.nested_obs import NestedObsEnv
from replaykit_envs.slippery_grid import SlipperyGridEnv

__all__ = ["DriftEnv", "ENV_IDS", "NestedObsEnv", "SlipperyGridEnv", "register_envs"]

#: env id -> (entry point, max_episode_steps)
_SPECS: dict[str, tuple[str, int]] = {
    "replaykit/SlipperyGrid-v0": ("replaykit_envs.slippery_grid:SlipperyGridEnv", 200),
    "replaykit/Drift-v0": ("replaykit_envs.drift:DriftEnv", 500),
    "replaykit/NestedObs-v0": ("replaykit_envs.nested_obs:NestedObsEnv", 300),
}

#: The ids :func:`register_envs` registers.
ENV_IDS: tuple[str, ...] = tuple(_SPECS)


def register_envs() -> None:
    """Register the replaykit test envs with gymnasium; calling it again does nothing."""
    for env_id, (entry_point, max_steps) in _SPECS.items():
        # Re-registering would make gymnasium warn (an error under filterwarnings=error).
        if env_id in gym.registry:
            continue
        gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_steps)


register_envs()
