"""Adapters for gymnasium's classic-control and toy-text envs.

Each adapter lists the attributes the next ``step`` reads (the env's
``np_random`` is captured separately by :func:`replaykit._state.envs.capture_chain`)
and the construction parameters that must match on restore.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium.envs.classic_control import (
    AcrobotEnv,
    CartPoleEnv,
    Continuous_MountainCarEnv,
    MountainCarEnv,
    PendulumEnv,
)
from gymnasium.envs.toy_text import BlackjackEnv, CliffWalkingEnv, FrozenLakeEnv, TaxiEnv

from replaykit._state.envs.registry import register_env_adapter
from replaykit._state.envs.values import AttrAdapter

__all__ = [
    "AcrobotAdapter",
    "BlackjackAdapter",
    "CartPoleAdapter",
    "CliffWalkingAdapter",
    "ContinuousMountainCarAdapter",
    "FrozenLakeAdapter",
    "MountainCarAdapter",
    "PendulumAdapter",
    "TaxiAdapter",
]


class CartPoleAdapter(AttrAdapter):
    """CartPole: ``state`` (float64[4]) and ``steps_beyond_terminated``."""

    name: ClassVar[str] = "classic_control.CartPole"
    attrs = ("state", "steps_beyond_terminated")
    config = (
        "gravity",
        "masscart",
        "masspole",
        "length",
        "force_mag",
        "tau",
        "kinematics_integrator",
        "_sutton_barto_reward",
    )


class AcrobotAdapter(AttrAdapter):
    """Acrobot: ``state`` (float32[4] after reset, float64[4] after a step)."""

    name: ClassVar[str] = "classic_control.Acrobot"
    attrs = ("state",)
    config = ("book_or_nips", "torque_noise_max", "dt")


class MountainCarAdapter(AttrAdapter):
    """MountainCar: ``state``, an array after reset and a tuple of scalars after a step."""

    name: ClassVar[str] = "classic_control.MountainCar"
    attrs = ("state",)
    config = ("goal_velocity", "force", "gravity")


class ContinuousMountainCarAdapter(AttrAdapter):
    """MountainCarContinuous: ``state`` (float64 after reset, float32 after a step)."""

    name: ClassVar[str] = "classic_control.MountainCarContinuous"
    attrs = ("state",)
    config = ("goal_velocity", "power")


class PendulumAdapter(AttrAdapter):
    """Pendulum: ``state`` and ``last_u`` (only drawn, but part of what render shows)."""

    name: ClassVar[str] = "classic_control.Pendulum"
    attrs = ("state", "last_u")
    config = ("g", "m", "l", "dt", "max_speed", "max_torque")


class FrozenLakeAdapter(AttrAdapter):
    """FrozenLake: position ``s`` and ``lastaction``; the map shape must match."""

    name: ClassVar[str] = "toy_text.FrozenLake"
    attrs = ("s", "lastaction")
    config = ("nrow", "ncol")


class CliffWalkingAdapter(AttrAdapter):
    """CliffWalking: position ``s`` and ``lastaction``."""

    name: ClassVar[str] = "toy_text.CliffWalking"
    attrs = ("s", "lastaction")
    config = ("is_slippery",)


class TaxiAdapter(AttrAdapter):
    """Taxi: ``s``, ``lastaction``, the fickle-passenger flag and the drawn orientation."""

    name: ClassVar[str] = "toy_text.Taxi"
    attrs = ("s", "lastaction", "fickle_step", "taxi_orientation")
    config = ("fickle_passenger", "fickle_probability", "rainy_probability")


class BlackjackAdapter(AttrAdapter):
    """Blackjack: both hands plus the rendered dealer card (numpy strings kept as ``str``)."""

    name: ClassVar[str] = "toy_text.Blackjack"
    attrs = ("dealer", "player")
    config = ("natural", "sab")
    _render_attrs = ("dealer_top_card_suit", "dealer_top_card_value_str")

    def capture(self, obj: Any) -> Any:
        state = super().capture(obj)
        # np.str_ is not a state-tree leaf: store the text and whether it was np.str_.
        render = {}
        for attr in self._render_attrs:
            value = getattr(obj, attr, None)
            if value is not None:
                render[attr] = [str(value), isinstance(value, np.str_)]
        state["render"] = render
        return state

    def check(self, obj: Any, state: Any) -> list[str]:
        if isinstance(state, dict) and "render" in state:
            state = {k: v for k, v in state.items() if k != "render"}
        return super().check(obj, state)

    def restore(self, obj: Any, state: Any) -> None:
        super().restore(obj, state)
        for attr, (text, was_np) in state.get("render", {}).items():
            if attr in self._render_attrs:
                setattr(obj, attr, np.str_(text) if was_np else str(text))


register_env_adapter(CartPoleEnv, CartPoleAdapter())
register_env_adapter(AcrobotEnv, AcrobotAdapter())
register_env_adapter(MountainCarEnv, MountainCarAdapter())
register_env_adapter(Continuous_MountainCarEnv, ContinuousMountainCarAdapter())
register_env_adapter(PendulumEnv, PendulumAdapter())
register_env_adapter(FrozenLakeEnv, FrozenLakeAdapter())
register_env_adapter(CliffWalkingEnv, CliffWalkingAdapter())
register_env_adapter(TaxiEnv, TaxiAdapter())
register_env_adapter(BlackjackEnv, BlackjackAdapter())
