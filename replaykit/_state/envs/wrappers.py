"""Adapters for gymnasium's stock wrappers (gymnasium 1.x attribute names).

Stateful wrappers get an :class:`~replaykit._state.envs.values.AttrAdapter` that
lists every attribute the next ``step``/``reset`` reads. Wrappers that only
transform data with fixed parameters are registered as stateless. Wrappers not
listed here (e.g. ``RecordVideo``) have no adapter, so capture refuses them.
Gymnasium's base classes (``Wrapper``, ``ObservationWrapper``, ...) are never
registered: an unknown subclass is not assumed stateless.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from gymnasium.wrappers import (
    AddRenderObservation,
    AddWhiteNoise,
    AtariPreprocessing,
    Autoreset,
    ClipAction,
    ClipReward,
    DelayObservation,
    DiscretizeAction,
    DiscretizeObservation,
    DtypeObservation,
    FilterObservation,
    FlattenObservation,
    FrameStackObservation,
    GrayscaleObservation,
    HumanRendering,
    MaxAndSkipObservation,
    NormalizeObservation,
    NormalizeReward,
    ObstructView,
    OrderEnforcing,
    PassiveEnvChecker,
    RecordEpisodeStatistics,
    RenderCollection,
    RepeatAction,
    RescaleAction,
    RescaleObservation,
    ReshapeObservation,
    ResizeObservation,
    StickyAction,
    TimeAwareObservation,
    TimeLimit,
    TransformAction,
    TransformObservation,
    TransformReward,
)

from replaykit._state.envs.registry import register_stateless_wrapper, register_wrapper_adapter
from replaykit._state.envs.values import AttrAdapter

__all__ = [
    "AtariPreprocessingAdapter",
    "AutoresetAdapter",
    "DelayObservationAdapter",
    "FrameStackObservationAdapter",
    "MaxAndSkipObservationAdapter",
    "NormalizeObservationAdapter",
    "NormalizeRewardAdapter",
    "OrderEnforcingAdapter",
    "PassiveEnvCheckerAdapter",
    "RecordEpisodeStatisticsAdapter",
    "RenderCollectionAdapter",
    "RepeatActionAdapter",
    "StickyActionAdapter",
    "TimeAwareObservationAdapter",
    "TimeLimitAdapter",
]


class TimeLimitAdapter(AttrAdapter):
    """TimeLimit: the step counter of the current episode."""

    name: ClassVar[str] = "gymnasium.TimeLimit"
    attrs = ("_elapsed_steps",)
    config = ("_max_episode_steps",)


class OrderEnforcingAdapter(AttrAdapter):
    """OrderEnforcing: whether ``reset`` was called."""

    name: ClassVar[str] = "gymnasium.OrderEnforcing"
    attrs = ("_has_reset",)
    config = ("_disable_render_order_enforcing",)


class PassiveEnvCheckerAdapter(AttrAdapter):
    """PassiveEnvChecker: which one-time checks already ran.

    The checker also keeps the last ``(obs, info)`` to warn if the next call
    returns the *same objects*. Object identity cannot be snapshotted, so the
    adapter records only whether that reference was held and restores a
    placeholder that shares nothing (the identity check then passes, as it
    would for any well-behaved env).
    """

    name: ClassVar[str] = "gymnasium.PassiveEnvChecker"
    attrs = (
        "checked_reset",
        "checked_step",
        "checked_render",
        "close_called",
        "checked_data_reuse",
    )

    def capture(self, obj: Any) -> Any:
        state = super().capture(obj)
        state["config"]["has_previous_data"] = obj._previous_data is not None
        return state

    def check(self, obj: Any, state: Any) -> list[str]:
        if isinstance(state, dict) and isinstance(state.get("config"), dict):
            state = dict(state)
            state["config"] = {k: v for k, v in state["config"].items() if k != "has_previous_data"}
        return super().check(obj, state)

    def restore(self, obj: Any, state: Any) -> None:
        super().restore(obj, state)
        held = bool(state["config"].get("has_previous_data", False))
        obj._previous_data = (None, None) if held else None


class RecordEpisodeStatisticsAdapter(AttrAdapter):
    """RecordEpisodeStatistics: running return/length, counters and the history queues.

    ``episode_start_time`` is a ``time.perf_counter()`` reading, meaningless in
    another process. It is captured as is and also as time elapsed in the
    episode; restore sets the start so that the elapsed time carries on. Times
    never affect dynamics, only ``info["episode"]["t"]``.
    """

    name: ClassVar[str] = "gymnasium.RecordEpisodeStatistics"
    attrs = ("episode_count", "episode_returns", "episode_lengths", "episode_start_time")
    deques = ("time_queue", "return_queue", "length_queue")
    config = ("_stats_key",)

    def capture(self, obj: Any) -> Any:
        state = super().capture(obj)
        start = obj.episode_start_time
        elapsed = None if start == -1 else float(time.perf_counter() - start)
        state["timing"] = {"episode_elapsed": elapsed}
        return state

    def check(self, obj: Any, state: Any) -> list[str]:
        if isinstance(state, dict) and "timing" in state:
            state = {k: v for k, v in state.items() if k != "timing"}
        return super().check(obj, state)

    def restore(self, obj: Any, state: Any) -> None:
        super().restore(obj, state)
        elapsed = state.get("timing", {}).get("episode_elapsed")
        if elapsed is not None:
            obj.episode_start_time = time.perf_counter() - elapsed


class NormalizeObservationAdapter(AttrAdapter):
    """NormalizeObservation: running mean/var/count (dtypes kept) and the update flag."""

    name: ClassVar[str] = "gymnasium.NormalizeObservation"
    attrs = ("obs_rms.mean", "obs_rms.var", "obs_rms.count", "_update_running_mean")
    config = ("epsilon",)

    def check(self, obj: Any, state: Any) -> list[str]:
        problems = super().check(obj, state)
        if not problems:
            live = obj.obs_rms.mean.shape
            for key in ("obs_rms.mean", "obs_rms.var"):
                saved = getattr(state["attrs"][key], "shape", None)
                if saved != live:
                    problems.append(f"{key}: expected shape {live}, found {saved}")
        return problems


class NormalizeRewardAdapter(AttrAdapter):
    """NormalizeReward: running return statistics and the discounted-return accumulator."""

    name: ClassVar[str] = "gymnasium.NormalizeReward"
    attrs = (
        "return_rms.mean",
        "return_rms.var",
        "return_rms.count",
        "discounted_reward",
        "_update_running_mean",
    )
    config = ("gamma", "epsilon")


class FrameStackObservationAdapter(AttrAdapter):
    """FrameStackObservation: the frame deque and the padding value."""

    name: ClassVar[str] = "gymnasium.FrameStackObservation"
    attrs = ("padding_value",)
    deques = ("obs_queue",)
    config = ("stack_size", "padding_type")

    def check(self, obj: Any, state: Any) -> list[str]:
        problems = super().check(obj, state)
        if not problems and len(state["deques"]["obs_queue"]) != obj.stack_size:
            problems.append(
                f"obs_queue: expected {obj.stack_size} frames, "
                f"found {len(state['deques']['obs_queue'])}"
            )
        return problems


class StickyActionAdapter(AttrAdapter):
    """StickyAction: last action and the current repeat series (its RNG is the env's)."""

    name: ClassVar[str] = "gymnasium.StickyAction"
    attrs = ("last_action", "is_sticky_actions", "num_repeats", "repeats_taken")
    config = ("repeat_action_probability", "repeat_action_duration_range")


class RepeatActionAdapter(AttrAdapter):
    """RepeatAction: no per-step state; the repeat count must match."""

    name: ClassVar[str] = "gymnasium.RepeatAction"
    config = ("num_repeats",)


class DelayObservationAdapter(AttrAdapter):
    """DelayObservation: the queue of not-yet-returned observations."""

    name: ClassVar[str] = "gymnasium.DelayObservation"
    deques = ("observation_queue",)
    config = ("delay",)


class TimeAwareObservationAdapter(AttrAdapter):
    """TimeAwareObservation: the step counter appended to observations."""

    name: ClassVar[str] = "gymnasium.TimeAwareObservation"
    attrs = ("timesteps",)
    config = ("max_timesteps", "normalize_time", "flatten")


class MaxAndSkipObservationAdapter(AttrAdapter):
    """MaxAndSkipObservation: the two-frame buffer (a stale frame survives early termination)."""

    name: ClassVar[str] = "gymnasium.MaxAndSkipObservation"
    attrs = ("_obs_buffer",)
    fixed = ("_obs_buffer",)
    config = ("_skip",)


class AutoresetAdapter(AttrAdapter):
    """Autoreset: whether the next ``step`` resets instead."""

    name: ClassVar[str] = "gymnasium.Autoreset"
    attrs = ("autoreset",)


class AtariPreprocessingAdapter(AttrAdapter):
    """AtariPreprocessing: lives, game-over flag and the max-pool frame buffers."""

    name: ClassVar[str] = "gymnasium.AtariPreprocessing"
    attrs = ("lives", "game_over", "obs_buffer")
    config = (
        "noop_max",
        "frame_skip",
        "screen_size",
        "terminal_on_life_loss",
        "grayscale_obs",
        "grayscale_newaxis",
        "scale_obs",
    )


class RenderCollectionAdapter(AttrAdapter):
    """RenderCollection: the collected frames (render output only)."""

    name: ClassVar[str] = "gymnasium.RenderCollection"
    attrs = ("frame_list",)
    config = ("pop_frames", "reset_clean")


_ADAPTERS: list[tuple[type, AttrAdapter]] = [
    (TimeLimit, TimeLimitAdapter()),
    (OrderEnforcing, OrderEnforcingAdapter()),
    (PassiveEnvChecker, PassiveEnvCheckerAdapter()),
    (RecordEpisodeStatistics, RecordEpisodeStatisticsAdapter()),
    (NormalizeObservation, NormalizeObservationAdapter()),
    (NormalizeReward, NormalizeRewardAdapter()),
    (FrameStackObservation, FrameStackObservationAdapter()),
    (StickyAction, StickyActionAdapter()),
    (RepeatAction, RepeatActionAdapter()),
    (DelayObservation, DelayObservationAdapter()),
    (TimeAwareObservation, TimeAwareObservationAdapter()),
    (MaxAndSkipObservation, MaxAndSkipObservationAdapter()),
    (Autoreset, AutoresetAdapter()),
    (AtariPreprocessing, AtariPreprocessingAdapter()),
    (RenderCollection, RenderCollectionAdapter()),
]

# Each of these only applies fixed parameters (or a user function) to data,
# or draws from the env's own RNG at render time (AddWhiteNoise, ObstructView).
_STATELESS: list[type] = [
    ClipAction,
    RescaleAction,
    TransformAction,
    DiscretizeAction,
    TransformObservation,
    FilterObservation,
    FlattenObservation,
    GrayscaleObservation,
    ResizeObservation,
    ReshapeObservation,
    RescaleObservation,
    DtypeObservation,
    AddRenderObservation,
    DiscretizeObservation,
    TransformReward,
    ClipReward,
    HumanRendering,
    AddWhiteNoise,
    ObstructView,
]

for _cls, _adapter in _ADAPTERS:
    register_wrapper_adapter(_cls, _adapter)
for _cls in _STATELESS:
    register_stateless_wrapper(_cls)

try:  # ArrayConversion needs array_api_compat; NumpyToTorch/JaxTo* subclass it.
    from gymnasium.wrappers.array_conversion import ArrayConversion
except ImportError:  # pragma: no cover - optional dependency missing
    pass
else:
    register_stateless_wrapper(ArrayConversion)
