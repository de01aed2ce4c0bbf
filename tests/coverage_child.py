"""Restore one snapshot in a fresh process and verify the steps after it (coverage matrix).

Usage: python tests/coverage_child.py PATH SNAPSHOT STEPS [PATH SNAPSHOT STEPS ...] -> one JSON
line per recording on stdout: ``{"verified": n, "restore_ms": t, "error": null | "...",
"error_type": ...}``. Several recordings share one process (none of them was recorded in it).
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    args = sys.argv[1:]
    for i in range(0, len(args), 3):
        one(args[i], args[i + 1], int(args[i + 2]))


def one(path: str, snap: str, steps: int) -> None:
    out: dict[str, object] = {"verified": 0, "restore_ms": None, "error": None, "error_type": None}
    try:
        from replaykit._format.store import Recording
        from replaykit._session.policies import resolve_policy
        from replaykit._session.replay import make_env, restore
        from replaykit._session.rollout import drive

        with Recording(path) as rec:
            seed = int((rec.meta.get("user") or {}).get("cli_seed") or 0)
            env = make_env(rec)
            policy = resolve_policy("random", env, seed)
            t0 = time.perf_counter()
            rep = restore(rec, snap, env=env, track=policy.state_objects())
            out["restore_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
            n = min(steps, rep.steps_left)
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
            finally:
                out["verified"] = rep.verified_steps
    except Exception as exc:  # reported in the matrix, never hidden
        out["error_type"] = type(exc).__name__
        out["error"] = str(exc)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
