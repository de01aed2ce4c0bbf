"""One rollout loop, used both to record and to replay, so both run the same code.

The loop, per iteration: reset if the episode ended; take any snapshot due at
this point; ``act``; log the policy's probes; ``step``; ``observe`` (which may
return a training update's values to log). Snapshots sit at the top of an
iteration, where the loop's only live state is the current observation.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from replaykit._format.store import Recording
from replaykit._session.policies import resolve_policy
from replaykit._session.record import RecordingWrapper
from replaykit._session.replay import Replay, make_env, register_env_namespace, restore
from replaykit.errors import PrefixEndError

__all__ = ["RecordSummary", "ReplaySummary", "drive", "record_rollout", "replay_snapshot"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy's global generator and torch."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def drive(
    env: gym.Env[Any, Any],
    policy: Any,
    steps: int,
    *,
    obs: Any,
    needs_reset: bool,
    on_probe: Callable[[str, Any], None] | None = None,
    on_update: Callable[..., Any] | None = None,
    at_top: Callable[[], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> Any:
    """Run ``steps`` iterations of the rollout loop; returns the last observation."""
    for _ in range(steps):
        if needs_reset:
            obs, _ = env.reset()
            needs_reset = False
        if at_top is not None:
            at_top()
        action = policy.act(obs)
        if on_probe is not None:
            for name, value in policy.probes().items():
                on_probe(name, value)
        obs, reward, terminated, truncated, _ = env.step(action)
        update = policy.observe(obs, reward, terminated, truncated)
        if update and on_update is not None:
            on_update(**update)
        needs_reset = bool(terminated or truncated)
        if on_step is not None:
            on_step()
    return obs


@dataclass
class RecordSummary:
    path: str
    env_id: str
    steps: int
    episodes: int
    updates: int
    snapshots: list[str] = field(default_factory=list)
    bytes: int = 0


def record_rollout(
    env_id: str,
    policy_spec: str,
    *,
    seed: int,
    steps: int,
    out: str | os.PathLike[str],
    snapshot_at: Iterable[int] = (),
    snapshot_every: int | None = None,
    episodes: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    on_step: Callable[[], None] | None = None,
) -> RecordSummary:
    """Record ``steps`` steps (or ``episodes`` episodes) of ``policy_spec`` on ``env_id``."""
    seed_everything(seed)
    register_env_namespace(env_id)
    env = gym.make(env_id, **(env_kwargs or {}))
    rec = RecordingWrapper(env, out, seed=seed, metadata={"policy": policy_spec, "cli_seed": seed})
    try:
        policy = resolve_policy(policy_spec, rec, seed)
        for name, obj in policy.state_objects().items():
            rec.track(name, obj)
        due = set(int(s) for s in snapshot_at)

        def at_top() -> None:
            t = rec.step_count
            if t in due or (snapshot_every and t > 0 and t % snapshot_every == 0):
                rec.snapshot()

        obs, _ = rec.reset()
        needs_reset = False
        while True:
            # --steps N alone: N steps; with --episodes, a cap (0 = none).
            if (episodes is None or steps) and rec.step_count >= steps:
                break
            # --episodes N: stop when the N-th episode ends, before resetting into another.
            if episodes is not None and needs_reset and rec.episode + 1 >= episodes:
                break
            obs = drive(
                rec,
                policy,
                1,
                obs=obs,
                needs_reset=needs_reset,
                on_probe=rec.probe,
                on_update=rec.log_update,
                at_top=at_top,
                on_step=on_step,
            )
            needs_reset = rec.needs_reset
        summary = RecordSummary(
            path=str(out),
            env_id=env_id,
            steps=rec.step_count,
            episodes=rec.episode + 1,
            updates=rec.update_count,
            snapshots=rec.snapshot_names,
        )
    finally:
        rec.close()
    summary.bytes = os.path.getsize(out)
    return summary


@dataclass
class ReplaySummary:
    snapshot: str
    step: int
    verified_steps: int
    verified_updates: int
    # The replay stopped at the end of the committed prefix of a recording that was not
    # closed (a killed recorder), before the update or reset that followed it.
    prefix_end: bool = False


def replay_snapshot(
    path: str | os.PathLike[str],
    snapshot_id: str | int | None,
    *,
    policy_spec: str | None = None,
    steps: int | None = None,
    rules: Any = None,
    verify: bool = True,
) -> ReplaySummary:
    """Restore one snapshot and verify the next ``steps`` steps (default: up to 100 or the end).

    Raises :class:`~replaykit.errors.DivergenceError` at the first difference.
    ``verify=False`` skips checksum checks (for experiments on hand-edited files).
    """
    with Recording(path, verify=verify) as rec:
        spec = policy_spec or (rec.meta.get("user") or {}).get("policy") or "random"
        if ":" in spec and policy_spec is None:
            from replaykit.errors import UsageError

            raise UsageError(
                f"{path} was recorded with policy {spec!r}; replaykit never imports names from a "
                "file: pass --policy again to replay it"
            )
        seed = int((rec.meta.get("user") or {}).get("cli_seed") or rec.meta.get("seed") or 0)
        env = make_env(rec)
        policy = resolve_policy(spec, env, seed)
        rep: Replay = restore(rec, snapshot_id, env=env, track=policy.state_objects(), rules=rules)
        n = rep.steps_left if steps is None else steps
        n = min(n, rep.steps_left)
        prefix_end = False
        try:
            drive(
                rep.env,
                policy,
                n,
                obs=rep.obs,
                needs_reset=rep.needs_reset,
                on_probe=rep.probe,
                on_update=rep.log_update,
            )
        except PrefixEndError:
            prefix_end = True
        return ReplaySummary(
            rep.snapshot.name,
            rep.snapshot.step,
            rep.verified_steps,
            rep.verified_updates,
            prefix_end,
        )
