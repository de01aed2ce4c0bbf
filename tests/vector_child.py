"""Restore a vector recording in a fresh process and verify it (run by tests/test_vector.py).

Usage: python tests/vector_child.py PATH KIND MODE STEPS  -> prints a JSON summary line.
"""

from __future__ import annotations

import json
import sys

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv

from replaykit._session.vector import capturable, restore_vector


def build(kind: str, mode: str, n: int = 4) -> gym.vector.VectorEnv:
    fns = capturable([lambda: gym.make("CartPole-v1")] * n)
    cls = AsyncVectorEnv if kind == "async" else SyncVectorEnv
    return cls(fns, autoreset_mode=mode)


def main() -> None:
    path, kind, mode, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    vec = build(kind, mode)
    try:
        rep = restore_vector(path, 0, vec_env=vec)
        for _ in range(steps):
            rep.env.step(rep.env.action_space.sample())
        print(json.dumps({"verified": rep.verified_steps, "step": rep.step_count}))
        rep.close()
    finally:
        vec.close()


if __name__ == "__main__":
    main()
