"""Env fidelity matrix: record, snapshot mid-episode, restore in a fresh process, verify.

For every env id of the installed families (classic control, toy text, Box2D,
MuJoCo v5, a representative set of ALE games), record a seeded random-policy
rollout with several candidate snapshots, pick the first one taken mid-episode,
restore it in a fresh Python process (``tests/coverage_child.py``) and verify
the following steps bit-exactly. Writes ``docs/COVERAGE.md``.

Run from the repository root::

    python benchmarks/coverage.py                # whole matrix -> docs/COVERAGE.md
    python benchmarks/coverage.py --ids CartPole-v1 LunarLander-v3 --out -
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "coverage_child.py"

CLASSIC = [
    "CartPole-v0",
    "CartPole-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "Pendulum-v1",
    "Acrobot-v1",
]
TOY_TEXT = [
    "Blackjack-v1",
    "FrozenLake-v1",
    "FrozenLake8x8-v1",
    "CliffWalking-v1",
    "CliffWalkingSlippery-v1",
    "Taxi-v4",
]
BOX2D = [
    "LunarLander-v3",
    "LunarLanderContinuous-v3",
    "BipedalWalker-v3",
    "BipedalWalkerHardcore-v3",
    "CarRacing-v3",
]
MUJOCO = [
    "Ant-v5",
    "HalfCheetah-v5",
    "Hopper-v5",
    "Humanoid-v5",
    "HumanoidStandup-v5",
    "InvertedDoublePendulum-v5",
    "InvertedPendulum-v5",
    "Pusher-v5",
    "Reacher-v5",
    "Swimmer-v5",
    "Walker2d-v5",
]
ALE = [
    "ALE/Pong-v5",
    "ALE/Breakout-v5",
    "ALE/SpaceInvaders-v5",
    "ALE/MsPacman-v5",
    "ALE/Seaquest-v5",
    "ALE/Qbert-v5",
    "ALE/Enduro-v5",
    "ALE/Asteroids-v5",
    "ALE/MontezumaRevenge-v5",
]
FAMILIES = {
    "classic control": CLASSIC,
    "toy text": TOY_TEXT,
    "Box2D": BOX2D,
    "MuJoCo": MUJOCO,
    "ALE": ALE,
}

# The default sample the pytest matrix runs (the rest is behind @pytest.mark.slow).
SAMPLE = (
    CLASSIC
    + TOY_TEXT
    + [
        "Hopper-v5",
        "HalfCheetah-v5",
        "InvertedPendulum-v5",
        "LunarLander-v3",
        "BipedalWalker-v3",
        "ALE/Pong-v5",
        "ALE/Breakout-v5",
    ]
)

# Candidate snapshot points; the first one taken mid-episode is restored.
SNAPSHOT_AT = (40, 47, 53, 61, 70, 85)
VERIFY = 100


def family_of(env_id: str) -> str:
    for fam, ids in FAMILIES.items():
        if env_id in ids:
            return fam
    return "other"


@dataclass
class Row:
    env_id: str
    family: str
    status: str  # "exact", or "not exact", or "cannot run"
    env_state: str  # adapter name, "replay-from-reset (...)", or "-"
    snapshot: str | None
    step_in_episode: int | None
    verified: int
    snapshot_bytes: int | None
    restore_ms: float | None
    reason: str


def measure(env_id: str, workdir: str | os.PathLike[str], *, verify: int = VERIFY) -> Row:
    """Record ``env_id``, restore a mid-episode snapshot in a fresh process, verify."""
    return measure_many([env_id], workdir, verify=verify)[0]


def measure_many(
    env_ids: list[str], workdir: str | os.PathLike[str], *, verify: int = VERIFY
) -> list[Row]:
    """Record each env here, then restore and verify them all in one fresh child process."""
    import warnings

    from replaykit._format.store import Recording
    from replaykit._session import rollout

    rows: dict[str, Row] = {}
    todo: list[tuple[str, Path, Any, int, str]] = []
    for env_id in env_ids:
        fam = family_of(env_id)
        path = Path(workdir) / (env_id.replace("/", "_") + ".h5")
        steps = max(SNAPSHOT_AT) + verify + 5
        try:
            with warnings.catch_warnings():
                # Old env versions (CartPole-v0) warn that they are out of date; still covered.
                warnings.simplefilter("ignore", DeprecationWarning)
                rollout.record_rollout(
                    env_id, "random", seed=7, steps=steps, out=path, snapshot_at=SNAPSHOT_AT
                )
        except Exception as exc:
            rows[env_id] = Row(
                env_id, fam, "cannot run", "-", None, None, 0, None, None,
                f"recording failed: {type(exc).__name__}: {_first_line(exc)}",
            )  # fmt: skip
            continue
        with Recording(path) as rec:
            snaps = rec.snapshots
            rec_steps = rec.stream("steps").rows
            adapter = str(rec.meta.get("env_adapter"))
        mid = [s for s in snaps if s.meta["step_in_episode"] > 0 and not s.meta["needs_reset"]]
        snap = (mid or snaps)[0]
        if snap.meta.get("env_state") == "adapter":
            env_state = adapter
        else:
            env_state = f"replay-from-reset ({snap.meta.get('replay_from', 'episode-start')})"
        todo.append((env_id, path, snap, min(verify, rec_steps - snap.step), env_state))
    if todo:
        argv = [str(CHILD)]
        for _, path, snap, n, _ in todo:
            argv += [str(path), snap.name, str(n)]
        pp = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
        proc = subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, timeout=1800, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=pp),
        )  # fmt: skip
        outs = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        for k, (env_id, path, snap, n, env_state) in enumerate(todo):
            fam = family_of(env_id)
            nbytes = snap.meta.get("bytes") or _snapshot_bytes(path, snap.name)
            k_in = snap.meta["step_in_episode"]
            if k >= len(outs):
                rows[env_id] = Row(
                    env_id, fam, "not exact", env_state, snap.name, k_in, 0, nbytes, None,
                    f"restore process failed: {proc.stderr.strip()[-300:]}",
                )  # fmt: skip
                continue
            out = outs[k]
            ok = out["error"] is None and out["verified"] >= n
            reason = "" if ok else f"{out['error_type']}: {_first_line(out['error'] or 'short')}"
            if k_in == 0 or snap.meta["needs_reset"]:
                ok = False
                reason = (reason + "; " if reason else "") + "no snapshot fell mid-episode"
            rows[env_id] = Row(
                env_id, fam, "exact" if ok else "not exact", env_state, snap.name, k_in,
                int(out["verified"]), nbytes, out["restore_ms"], reason,
            )  # fmt: skip
    return [rows[i] for i in env_ids]


def _snapshot_bytes(path: Path, name: str) -> int:
    """Stored bytes of a snapshot's arrays (read-only look at the file's snapshot group)."""
    import h5py

    from replaykit._format import layout as F

    total = 0
    with h5py.File(path, "r") as f:
        group = f[F.snapshot_path(name)]
        for key in group:
            obj = group[key]
            if isinstance(obj, h5py.Dataset):
                total += int(obj.id.get_storage_size())
    return total


def _first_line(exc: object) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(text[:3])[:400] if text else ""


def render(rows: list[Row], seconds: float) -> str:
    import gymnasium

    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    fallback = sum(1 for r in rows if r.status == "exact" and r.env_state.startswith("replay"))
    lines = [
        "# Env coverage: mid-episode snapshots that continue bit-exactly",
        "",
        "Generated by `python benchmarks/coverage.py` (do not edit by hand). Each env is",
        f"recorded with a seeded random policy ({max(SNAPSHOT_AT) + VERIFY + 5} steps, seed 7),",
        "snapshotted mid-episode, **restored in a fresh Python process** (one per family) and",
        "stepped on with",
        f"the restored policy; every one of the next {VERIFY} steps (observation, reward, flags,",
        "infos, actions) must match the recording bit for bit.",
        "",
        f"Run: {time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, "
        f"gymnasium {gymnasium.__version__}, {platform.machine()}, {seconds:.0f} s.",
        "",
        f"**{counts.get('exact', 0)} exact** ({counts.get('exact', 0) - fallback} through an "
        f"env adapter, {fallback} through verified replay-from-reset), "
        f"**{counts.get('not exact', 0)} not exact**, "
        f"**{counts.get('cannot run', 0)} cannot run here** (reasons below).",
        "",
        "`env state`: the adapter that captured the env, or *replay-from-reset*: the env has no",
        "complete state to capture (Box2D), so restore re-seeds the recorded reset and re-applies",
        "the recorded actions, verifying every re-run step (`episode-start` from the snapshot's",
        "episode; `recording-start` from the first reset, for envs whose physics world outlives",
        "`reset()`). `restore ms` is the time of `replaykit.restore` in the fresh process",
        "(file open and checks, snapshot load, env restore or fast-forward).",
        "",
        "| env id | family | result | env state | step in episode | steps verified "
        "| snapshot bytes | restore ms | reason |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r.env_id}` | {r.family} | {r.status} | {r.env_state} | "
            f"{'' if r.step_in_episode is None else r.step_in_episode} | {r.verified} | "
            f"{'' if r.snapshot_bytes is None else f'{r.snapshot_bytes:,}'} | "
            f"{'' if r.restore_ms is None else r.restore_ms} | {r.reason.replace('|', '/')} |"
        )
    lines += ["", BOX2D_NOTE]
    return "\n".join(lines) + "\n"


BOX2D_NOTE = """## Box2D: replay-from-reset, and what it costs

Box2D exposes no complete world state (contact caches, broad-phase tree and body
order are not readable), so Box2D envs are restored by the verified replay-from-reset
path: re-seed with the recorded reset, re-apply the recorded actions, and compare
every re-run step with the recording (a difference raises `NondeterministicEnvError`).
BipedalWalker and CarRacing keep one `b2World` across resets, so their history
reaches back to the recording's first reset and replay starts there; LunarLander
builds a new world per episode and replays only the snapshot's episode.

The fast-forward reads the recorded columns a block at a time and checks each step
with a bit-level comparison (the full report is built only on a difference); no
recording, no rendering (`render_mode="human"` is switched off while re-running).
Measured on this machine (2 cores), by the same script:

{box2d_cost}
"""


def box2d_cost(workdir: str) -> str:
    """Time fast-forward per step against raw ``env.step`` for a snapshot 300 steps in."""
    import gymnasium as gym
    import numpy as np
    from gymnasium.envs.box2d.lunar_lander import heuristic

    from replaykit._session.record import RecordingWrapper
    from replaykit._session.replay import restore

    def hover(env: gym.Env, obs: np.ndarray) -> int:
        s = np.array(obs, copy=True)
        s[1] -= 0.6  # hold the lander up so the episode lasts past step 300
        return int(heuristic(env.unwrapped, s))

    rows = [
        "| env | raw env.step ms | fast-forward ms/step | restore ms (snapshot 300 "
        "steps in) | restore ms (snapshot at step 0) |",
        "|---|---:|---:|---:|---:|",
    ]
    for env_id in ("LunarLander-v3", "BipedalWalker-v3", "CarRacing-v3"):
        path = Path(workdir) / f"cost-{env_id}.h5"
        env = RecordingWrapper(gym.make(env_id), path, seed=0, snapshot_at=[0, 300])
        obs, _ = env.reset()
        actions = []
        for _ in range(300):
            a = hover(env, obs) if env_id.startswith("Lunar") else env.action_space.sample()
            actions.append(a)
            obs, _, term, trunc, _ = env.step(a)
            if term or trunc:
                if env_id.startswith("Lunar"):
                    raise RuntimeError(f"{env_id}: episode ended before step 300")
                # BipedalWalker and CarRacing replay from the recording's first reset, so
                # 300 recorded steps are re-run whatever the episodes in between.
                actions.append(None)
                obs, _ = env.reset()
        env.close()
        raw = gym.make(env_id)
        raw.reset(seed=0)
        t0 = time.perf_counter()
        for a in actions:
            if a is None:
                raw.reset()
            else:
                raw.step(a)
        raw_ms = (time.perf_counter() - t0) * 1e3 / 300
        times = {}
        for snap in (0, 1):  # snapshot_at=[0, 300]: the fixed cost, and 300 steps in
            best = float("inf")
            for _ in range(3):
                # A fresh env each time: a Box2D world that outlived a restore carries its history.
                fresh = gym.make(env_id)
                t0 = time.perf_counter()
                rep = restore(path, snap, env=fresh)
                best = min(best, (time.perf_counter() - t0) * 1e3)
                rep.close()
            times[snap] = best
        per_step = (times[1] - times[0]) / 300
        rows.append(
            f"| `{env_id}` | {raw_ms:.3f} | {per_step:.3f} | {times[1]:.0f} | {times[0]:.0f} |"
        )
    return "\n".join(rows) + (
        "\n\n(fast-forward ms/step = (restore at 300 - restore at 0) / "
        "300: the re-run step with its verification, without the fixed "
        "file-open and snapshot-load cost.)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", nargs="*", help="env ids (default: the whole matrix)")
    ap.add_argument("--sample", action="store_true", help="only the pytest sample")
    ap.add_argument("--out", default=str(ROOT / "docs" / "COVERAGE.md"), help="'-' for stdout")
    ap.add_argument("--json", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    ids = args.ids or (SAMPLE if args.sample else [i for ids in FAMILIES.values() for i in ids])
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam_ids in FAMILIES.values():
            batch = [i for i in ids if i in fam_ids]
            for row in measure_many(batch, tmp) if batch else []:
                print(
                    f"{row.env_id:28s} {row.status:10s} {row.verified:4d} {row.reason[:80]}",
                    file=sys.stderr,
                )
                rows.append(row)
        cost = box2d_cost(tmp)
    text = render(rows, time.perf_counter() - t0).replace("{box2d_cost}", cost)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0 if all(r.status == "exact" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
