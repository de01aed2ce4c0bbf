"""Adapters for the replaykit test envs in :mod:`replaykit_envs`."""

from __future__ import annotations

from typing import ClassVar

from replaykit_envs import DriftEnv, NestedObsEnv, SlipperyGridEnv

from replaykit._state.envs.registry import register_env_adapter
from replaykit._state.envs.values import AttrAdapter

__all__ = ["DriftAdapter", "NestedObsAdapter", "SlipperyGridAdapter"]


class SlipperyGridAdapter(AttrAdapter):
    """SlipperyGrid: the agent position."""

    name: ClassVar[str] = "replaykit_envs.SlipperyGrid"
    attrs = ("pos",)
    fixed = ("pos",)
    config = ("size", "slip_prob", "obs_type")


class DriftAdapter(AttrAdapter):
    """Drift: the point ``x`` and the multiplicative ``gain`` (dtype kept exactly)."""

    name: ClassVar[str] = "replaykit_envs.Drift"
    attrs = ("x", "gain")
    fixed = ("x",)
    config = ("action_dim", "dtype_name", "noise")


class NestedObsAdapter(AttrAdapter):
    """NestedObs: canvas image, position, vector, mode, phase and counters."""

    name: ClassVar[str] = "replaykit_envs.NestedObs"
    attrs = ("canvas", "pos", "vec", "mode", "phase", "collisions", "t")
    fixed = ("canvas", "pos", "vec", "phase")


register_env_adapter(SlipperyGridEnv, SlipperyGridAdapter())
register_env_adapter(DriftEnv, DriftAdapter())
register_env_adapter(NestedObsEnv, NestedObsAdapter())
