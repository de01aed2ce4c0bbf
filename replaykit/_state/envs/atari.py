"""Env adapter for the Arcade Learning Environment (``ale_py.env.AtariEnv``).

The emulator state comes from ALE's own cloning,
``ale.cloneState(include_rng=True)``, serialised to bytes and stored as a
``uint8`` array. It holds the console RAM, CPU, TIA and RIOT registers, frame
counters and the RNG that decides when an action sticks. Without
``include_rng`` a restored env with ``repeat_action_probability > 0`` (the v5
default, 0.25) diverges within a few steps.

ALE's clone does **not** hold the sticky action itself (``m_actions`` in
``StellaEnvironment``, the action a frame repeats when its draw says "stick"),
and ale-py has no getter for it. It matters only when the first frames after
the snapshot stick, and the RNG in the clone says exactly which ones do (it is
a ``std::mt19937``, serialised as text; numpy's ``MT19937`` continues it). When
``j > 0`` leading frames stick, :meth:`AtariEnvAdapter.capture` finds an
action whose effect over those ``j`` frames equals the live one's, by running
them on the live env and on each candidate, then puts the live env back
exactly. :meth:`AtariEnvAdapter.restore` primes that action before restoring
the clone, so the ``j`` sticky frames repeat it. From frame ``j`` on the new
action is taken, so an action that matches over ``j`` frames is exact for
every continuation.

Limitation: ALE keeps the last rendered screen outside its clone, and ale-py
cannot set it. Until the next ``step``, ``render()``/``ale.getScreenRGB()``
on a restored env (and on the live env after a capture that had to find the
sticky action) show another frame; every ``step`` result is exact.

The env's ``np_random`` is captured too: ``AtariEnv`` draws a stochastic
frameskip from it when ``frameskip`` is a ``(low, high)`` tuple.

Settings that are not part of the emulator state (game, observation type,
frameskip, sticky-action probability, action set) are recorded and checked
on restore, so a snapshot is never restored into a differently built env.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import numpy as np

from replaykit._state.envs.registry import register_env_adapter
from replaykit.errors import CaptureError, StateMismatchError

try:
    import ale_py
    from ale_py.env import AtariEnv
except ImportError:  # the atari extra is not installed: register nothing
    _AVAILABLE = False
else:
    _AVAILABLE = True

__all__ = ["AtariEnvAdapter", "register"]

# libstdc++ writes a std::mt19937 as its 624 state words and the index, space separated.
_MT19937_TEXT = re.compile(rb"(?:\d+ ){624}\d+")
# At most this many bytes (two ints and separators) follow the RNG text in a clone.
_RNG_TAIL_MAX_BYTES = 32
# A run of sticky frames longer than this is astronomically unlikely (0.25**64).
_MAX_STICKY_FRAMES = 64


_NO_RNG_TEXT = (
    "expected the ALE clone to end with its std::mt19937 text, found none; "
    "this ale-py serialises differently, pin ale-py 0.12 or use repeat_action_probability=0"
)


def _sticky_frames(ale_state: bytes, repeat_action_probability: float) -> int | None:
    """Count the leading frames after ``ale_state`` whose player-A draw repeats the last action.

    ALE draws twice per frame (player A, then player B) and takes the new
    action when ``draw / 2**32 >= repeat_action_probability``. Returns
    ``None`` when the clone holds no RNG text to read.
    """
    if repeat_action_probability <= 0.0:
        return 0
    matches = list(_MT19937_TEXT.finditer(ale_state))
    # The environment RNG is the last thing in the clone, followed only by two ints.
    if not matches or len(ale_state) - matches[-1].end() > _RNG_TAIL_MAX_BYTES:
        return None
    words = [int(w) for w in matches[-1].group().split()]
    bit_generator = np.random.MT19937()
    bit_generator.state = {
        "bit_generator": "MT19937",
        "state": {"key": np.array(words[:624], dtype=np.uint32), "pos": words[624]},
    }
    draws = bit_generator.random_raw(2 * (_MAX_STICKY_FRAMES + 1))[0::2]
    threshold = float(np.float32(repeat_action_probability))
    for frame, draw in enumerate(draws):
        if float(draw) / 4294967296.0 >= threshold:
            return frame
    raise CaptureError(
        f"expected a non-sticky frame within {_MAX_STICKY_FRAMES} frames, found none; "
        "the ALE RNG state looks corrupt"
    )


def _prime_sticky_action(ale: Any, snapshot: Any, action: int, sticky: int) -> None:
    """Make ``action`` ALE's remembered sticky action, then restore ``snapshot``.

    From ``snapshot`` the first ``sticky`` frames repeat the old action and the
    next one takes the action given, so ``sticky + 1`` frames set it for sure.
    ``restoreState`` leaves the remembered action alone.
    """
    ale.restoreState(snapshot)
    for _ in range(sticky + 1):
        ale.act(action)
    ale.restoreState(snapshot)


def _frames_outcome(ale: Any, frames: int) -> tuple[bytes, bytes, bytes]:
    for _ in range(frames):
        ale.act(0)  # the action passed is ignored: every one of these frames sticks
    return (
        ale.cloneState(include_rng=True).serialize(),
        ale.getRAM().tobytes(),
        ale.getScreen().tobytes(),
    )


def _find_sticky_action(env: Any, snapshot: Any, sticky: int) -> int:
    """Return an action equivalent to ALE's hidden sticky action for the next ``sticky`` frames.

    Runs those frames on the live env (they use the hidden action whatever is
    passed), then on each candidate; the live env is put back to ``snapshot``
    with the chosen action primed, so capturing does not change its future.
    """
    ale = env.ale
    if ale.getInt("frame_skip") != 1:
        raise CaptureError(
            f"expected ALE's internal frame_skip to be 1, found {ale.getInt('frame_skip')}; "
            "set frameskip on the gymnasium env instead"
        )
    truth = _frames_outcome(ale, sticky)
    for candidate in ale.getLegalActionSet():
        action = int(getattr(candidate, "value", candidate))
        _prime_sticky_action(ale, snapshot, action, sticky)
        if _frames_outcome(ale, sticky) == truth:
            _prime_sticky_action(ale, snapshot, action, sticky)
            return action
    raise CaptureError(
        "expected one of ALE's legal actions to reproduce the pending sticky frames, "
        "found none; paddle strengths from continuous actions cannot be captured, "
        "use repeat_action_probability=0"
    )


def _copy_tree(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _copy_tree(v) for k, v in tree.items()}
    if isinstance(tree, np.ndarray):
        return tree.copy()
    return tree


def _config(env: Any) -> dict[str, Any]:
    # Everything here is fixed when the env is built; it shapes how the next
    # step turns an action into frames, so it must match on restore.
    frameskip = env._frameskip
    return {
        "game": str(env._game),
        "obs_type": str(env._obs_type),
        "frameskip": list(frameskip) if isinstance(frameskip, tuple) else int(frameskip),
        "repeat_action_probability": float(env.ale.getFloat("repeat_action_probability")),
        "continuous": bool(env.continuous),
        "action_set": [int(getattr(a, "value", a)) for a in env._action_set],
    }


_KEYS = {"config", "ale_state", "sticky_frames", "sticky_action", "np_random"}


class AtariEnvAdapter:
    """Captures and restores the complete state of an ``ale_py`` ``AtariEnv``.

    Example:
        >>> import ale_py, gymnasium as gym
        >>> from replaykit._state.envs.atari import AtariEnvAdapter
        >>> gym.register_envs(ale_py)
        >>> env = gym.make("ALE/Pong-v5")
        >>> _ = env.reset(seed=0)
        >>> state = AtariEnvAdapter().capture(env.unwrapped)
        >>> state["ale_state"].dtype
        dtype('uint8')
    """

    name: ClassVar[str] = "atari.AtariEnv"

    def capture(self, env: Any) -> dict[str, Any]:
        """Return the serialised emulator state (with its RNG), the env RNG and the config.

        Raises:
            CaptureError: the env returns sound observations, whose audio
                buffer ALE does not clone.
        """
        if getattr(env, "sound_obs", False):
            raise CaptureError(
                "AtariEnv with sound_obs=True cannot be captured: ALE does not clone the "
                "audio buffer; build the env with sound_obs=False"
            )
        config = _config(env)
        snapshot = env.ale.cloneState(include_rng=True)
        ale_state = snapshot.serialize()
        sticky = _sticky_frames(ale_state, config["repeat_action_probability"])
        if sticky is None:
            raise CaptureError(_NO_RNG_TEXT)
        # -1: no frame repeats the remembered action before a new one is taken.
        sticky_action = _find_sticky_action(env, snapshot, sticky) if sticky else -1
        return {
            "config": config,
            "ale_state": np.frombuffer(ale_state, dtype=np.uint8).copy(),
            "sticky_frames": sticky,
            "sticky_action": sticky_action,
            "np_random": _copy_tree(env.np_random.bit_generator.state),
        }

    def restore(self, env: Any, state: dict[str, Any]) -> None:
        """Put ``env`` into the captured state; its next ``step`` is bit-identical.

        Raises:
            StateMismatchError: the env was built with another game or other
                settings than the one the snapshot was taken from.
        """
        what = f"Atari env {getattr(env, '_game', type(env).__name__)!r}"
        if not isinstance(state, dict) or not set(state) >= _KEYS:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise StateMismatchError(what, [f"expected an Atari env snapshot, found {found}"])
        problems: list[str] = []
        live = _config(env)
        for key, saved in state["config"].items():
            if live.get(key) != saved:
                problems.append(f"{key}: snapshot has {saved!r}, env has {live.get(key)!r}")
        ale_state = state["ale_state"]
        if not isinstance(ale_state, np.ndarray) or ale_state.dtype != np.uint8:
            problems.append(f"ale_state: expected a uint8 array, found {type(ale_state).__name__}")
        saved_bg = state["np_random"].get("bit_generator")
        live_bg = type(env.np_random.bit_generator).__name__
        if saved_bg != live_bg:
            problems.append(
                f"np_random bit generator: snapshot has {saved_bg!r}, env has {live_bg!r}"
            )
        if problems:
            raise StateMismatchError(what, problems)
        try:
            ale_snapshot = ale_py.ALEState(ale_state.tobytes())
        except (RuntimeError, SystemError, ValueError) as exc:
            # ALE's C++ deserialiser reports short or garbled bytes this way.
            raise StateMismatchError(
                what, [f"ale_state: ALE cannot read these {ale_state.size} bytes ({exc})"]
            ) from exc
        # The pending sticky frames are a function of the clone's RNG; a count
        # that disagrees means the bytes or the settings are not what was captured.
        sticky = _sticky_frames(ale_state.tobytes(), live["repeat_action_probability"])
        if sticky != state["sticky_frames"]:
            saved_sticky = state["sticky_frames"]
            raise StateMismatchError(
                what, [f"sticky_frames: snapshot says {saved_sticky}, its RNG says {sticky}"]
            )
        sticky_action = int(state["sticky_action"])
        if sticky_action >= 0:
            _prime_sticky_action(env.ale, ale_snapshot, sticky_action, int(state["sticky_frames"]))
        else:
            env.ale.restoreState(ale_snapshot)
        env.np_random.bit_generator.state = _copy_tree(state["np_random"])


def register() -> None:
    """Register the Atari adapter; does nothing when ale-py is not installed."""
    if not _AVAILABLE:
        return
    register_env_adapter(AtariEnv, AtariEnvAdapter())
