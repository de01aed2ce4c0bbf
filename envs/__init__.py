"""Small deterministic test envs for replaykit, registered with gymnasium.

Importing this package registers four envs under the ``replaykit`` namespace
(:data:`ENV_IDS` holds the first three):

* ``replaykit/SlipperyGrid-v0``: a slippery grid world with discrete actions.
* ``replaykit/Drift-v0``: continuous nonlinear dynamics whose float error accumulates.
* ``replaykit/NestedObs-v0``: nested ``Dict``/``Tuple`` observations and ragged infos.
* ``replaykit/GlobalNoise-v0``: CartPole drawing from NumPy's global RNG in ``step()``
  (:mod:`replaykit_envs.diagnostics` also holds pathological wrappers and policies).

The first three draw from ``self.np_random`` every step, so restoring a snapshot without
the env RNG visibly diverges. Importing the package also registers each env's
state adapter with replaykit through its public API (``replaykit.register_env_adapter``),
the way a user's own env package would; replaykit itself never imports this package
except to resolve a recorded ``replaykit/...`` id.

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

__all__ = ["ENV_IDS", "DriftEnv", "NestedObsEnv", "SlipperyGridEnv", "register_envs"]

#: env id -> (entry point, max_episode_steps)
_SPECS: dict[str, tuple[str, int]] = {
    "replaykit/SlipperyGrid-v0": ("replaykit_envs.slippery_grid:SlipperyGridEnv", 200),
    "replaykit/Drift-v0": ("replaykit_envs.drift:DriftEnv", 500),
    "replaykit/NestedObs-v0": ("replaykit_envs.nested_obs:NestedObsEnv", 300),
}
#: Envs with a deliberate flaw, for ``replaykit doctor`` (not in :data:`ENV_IDS`).
_DIAGNOSTIC_SPECS: dict[str, tuple[str, int]] = {
    "replaykit/GlobalNoise-v0": ("replaykit_envs.diagnostics:GlobalNoiseEnv", 500),
}

#: The ids :func:`register_envs` registers.
ENV_IDS: tuple[str, ...] = tuple(_SPECS)


def register_envs() -> None:
    """Register the replaykit test envs with gymnasium; calling it again does nothing."""
    for env_id, (entry_point, max_steps) in {**_SPECS, **_DIAGNOSTIC_SPECS}.items():
        # Re-registering would make gymnasium warn (an error under filterwarnings=error).
        if env_id in gym.registry:
            continue
        gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_steps)


def _register_adapters() -> None:
    from typing import ClassVar

    import replaykit

    class SlipperyGridAdapter(replaykit.AttrAdapter):
        """SlipperyGrid: the agent position."""

        name: ClassVar[str] = "replaykit_envs.SlipperyGrid"
        attrs = ("pos",)
        fixed = ("pos",)
        config = ("size", "slip_prob", "obs_type")

    class DriftAdapter(replaykit.AttrAdapter):
        """Drift: the point ``x`` and the multiplicative ``gain`` (dtype kept exactly)."""

        name: ClassVar[str] = "replaykit_envs.Drift"
        attrs = ("x", "gain")
        fixed = ("x",)
        config = ("action_dim", "dtype_name", "noise")

    class NestedObsAdapter(replaykit.AttrAdapter):
        """NestedObs: canvas image, position, vector, mode, phase and counters."""

        name: ClassVar[str] = "replaykit_envs.NestedObs"
        attrs = ("canvas", "pos", "vec", "mode", "phase", "collisions", "t")
        fixed = ("canvas", "pos", "vec", "phase")

    replaykit.register_env_adapter(SlipperyGridEnv, SlipperyGridAdapter())
    replaykit.register_env_adapter(DriftEnv, DriftAdapter())
    replaykit.register_env_adapter(NestedObsEnv, NestedObsAdapter())
    from replaykit_envs.diagnostics import ScaleDimension

    replaykit.register_stateless_wrapper(ScaleDimension)


register_envs()
_register_adapters()
