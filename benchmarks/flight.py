"""Flight mode and ``replaykit extract``, through the public calls a user makes.

    python benchmarks/flight.py                       # full sizes (a few minutes on 2 cores)
    python benchmarks/flight.py --quick               # smoke sizes (seconds)
    python benchmarks/flight.py --markdown /tmp/flight.md

Rows (each case runs in a child process of its own, so peak RSS is that case's):

* Flight recording of CartPole steps with a snapshot every 10k steps, retention 3
  (``keep_snapshots=3``), against the same recording keeping every snapshot: file sizes,
  and recording throughput as the median of per-round ratios (alternating rounds, CPU time).
* The extracted fixture of a CartPole + small MLP + Adam run, 200 steps after the snapshot.
* ``replaykit.extract`` of a large recording (image observations): time, against a raw read
  of the file, and the child's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _mlp_adam(hidden: int, layers: int = 1) -> tuple[Any, Any]:
    import torch

    torch.manual_seed(0)
    mods: list[Any] = [torch.nn.Linear(4, hidden), torch.nn.Tanh()]
    for _ in range(layers - 1):
        mods += [torch.nn.Linear(hidden, hidden), torch.nn.Tanh()]
    model = torch.nn.Sequential(*mods, torch.nn.Linear(hidden, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    return model, opt


def case_flight(quick: bool, tmp: Path) -> list[dict[str, Any]]:
    """Flight recording (retention 3) vs keeping every snapshot: size and throughput."""
    import gymnasium as gym

    import replaykit

    steps = 100_000 if quick else 1_000_000
    rounds = 10 if quick else 25
    every = 10_000
    hidden = 512  # two hidden layers: ~265k parameters, ~3.2 MB per snapshot with Adam
    runs = {}
    for label, keep in (("plain", None), ("flight", 3)):
        model, opt = _mlp_adam(hidden, layers=2)
        env = replaykit.RecordingWrapper(
            gym.make("CartPole-v1"),
            tmp / f"{label}.h5",
            seed=0,
            snapshot_every=every,
            keep_snapshots=keep,
            detect_failures=True,  # both check for failures: only retention differs
            track={"model": model, "opt": opt},
        )
        env.reset()
        runs[label] = env
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, steps).tolist()

    def run(env: Any, n: int) -> float:
        t0 = time.process_time()
        step, reset = env.step, env.reset
        t = env.step_count
        for i in range(t, t + n):
            _, _, term, trunc, _ = step(actions[i % steps])
            if term or trunc:
                reset()
        return time.process_time() - t0

    per = steps // rounds
    ratios, plain_s, flight_s = [], [], []
    for _ in range(rounds):
        a = run(runs["plain"], per)
        b = run(runs["flight"], per)
        plain_s.append(a)
        flight_s.append(b)
        ratios.append(a / b)
    snaps = {k: len(v.snapshot_names) for k, v in runs.items()}
    for env in runs.values():
        env.close()
    sizes = {k: os.path.getsize(tmp / f"{k}.h5") for k in runs}
    mid = float(np.median(ratios))
    q1, q3 = (float(x) for x in np.quantile(ratios, [0.25, 0.75]))
    label = f"{steps // 1000}k" if steps < 1_000_000 else f"{steps // 1_000_000}M"
    rows = [
        {
            "name": f"Flight recording, {label} CartPole steps, snapshot every 10k "
            f"(MLP 2x{hidden} + Adam), retention 3: file size",
            "measure": f"{sizes['flight'] / 1e6:.1f} MB ({snaps['flight']} snapshots kept)",
            "baseline": f"{sizes['plain'] / 1e6:.1f} MB keeping all {snaps['plain']}",
            "ratio": sizes["flight"] / sizes["plain"],
            "target": "bounded: streams + at most keep + 2 snapshots",
            "ok": None,
            "raw": {"sizes": sizes, "snapshots": snaps},
        },
        {
            "name": f"Flight recording throughput, {label} CartPole steps, retention 3",
            "measure": f"{per * rounds / sum(flight_s):,.0f} steps/s (ratio IQR {q1:.2f}-{q3:.2f})",
            "baseline": f"{per * rounds / sum(plain_s):,.0f} steps/s keeping every snapshot",
            "ratio": mid,
            "target": ">= 0.98x",
            "ok": mid >= 0.98,
            "raw": {"ratios": ratios},
        },
    ]
    (tmp / "plain.h5").unlink()
    (tmp / "flight.h5").unlink()
    return rows


def case_fixture(quick: bool, tmp: Path) -> list[dict[str, Any]]:
    """The extracted fixture of a CartPole + small MLP + Adam run: 200 steps after a snapshot."""
    import gymnasium as gym
    import torch

    import replaykit

    model, opt = _mlp_adam(64)
    src = tmp / "src.h5"
    with replaykit.RecordingWrapper(
        gym.make("CartPole-v1"), src, seed=0, snapshot_every=1000, track={"m": model, "o": opt}
    ) as env:
        obs, _ = env.reset()
        for t in range(3000):
            with torch.no_grad():
                action = int(model(torch.as_tensor(obs)).argmax())
            obs, _, term, trunc, _ = env.step(action)
            if t % 100 == 99:
                loss = model(torch.as_tensor(obs)).pow(2).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                env.log_update(loss=loss.detach())
            if term or trunc:
                obs, _ = env.reset()
    out = tmp / "fixture.h5"
    res = replaykit.extract(src, out, snapshot="step-002000", steps=200)
    return [
        {
            "name": "Extracted fixture: CartPole + MLP(64) + Adam, 200 steps after the snapshot",
            "measure": f"{res.bytes / 1024:.1f} KiB ({res.steps} step rows, {res.updates} updates)",
            "baseline": f"source {os.path.getsize(src) / 1024:.0f} KiB (3000 steps, 3 snapshots)",
            "ratio": None,
            "target": "<= 64 KiB",
            "ok": res.bytes <= 64 * 1024,
            "raw": {"bytes": res.bytes},
        }
    ]


def case_big_write(quick: bool, tmp: Path) -> list[dict[str, Any]]:
    """Write a large recording (96x96 uint8 observations) for ``big_extract``."""
    import gymnasium as gym

    import replaykit

    class BigObs(gym.ObservationWrapper[Any, Any, Any]):
        def __init__(self, env: gym.Env[Any, Any]) -> None:
            super().__init__(env)
            self.observation_space = gym.spaces.Box(0, 255, (96, 96), np.uint8)
            self.k = 0

        def observation(self, observation: Any) -> Any:
            self.k += 1
            return np.full((96, 96), self.k % 251, np.uint8)

    replaykit.register_stateless_wrapper(BigObs)
    steps = 10_000 if quick else 110_000  # 9.2 KB a step: about 1 GB at full size
    src = tmp / "big.h5"
    env = replaykit.RecordingWrapper(
        BigObs(gym.make("CartPole-v1")), src, seed=0, snapshot_every=steps // 2
    )
    env.reset()
    for i in range(steps):
        _, _, term, trunc, _ = env.step(i % 2)
        if term or trunc:
            env.reset()
    env.close()
    return []


def case_big_extract(quick: bool, tmp: Path) -> list[dict[str, Any]]:
    """Extract 1000 steps of ``big_write``'s recording, in a process of its own."""
    import resource

    import replaykit

    src = tmp / "big.h5"
    with replaykit.Recording(src) as rec:
        first = rec.snapshots[0].name
    size = os.path.getsize(src)
    # The baseline: reading the file's bytes once (what verifying its checksums costs).
    t0 = time.perf_counter()
    with open(src, "rb") as f:
        while f.read(1 << 24):
            pass
    raw_s = time.perf_counter() - t0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    res = replaykit.extract(src, tmp / "cut.h5", snapshot=first, steps=1000)
    took = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    src.unlink()
    return [
        {
            "name": f"replaykit.extract of a {size / 1e9:.2f} GB recording (1000 steps cut)",
            "measure": f"{took:.2f} s; peak RSS {peak:.0f} MB; fixture {res.bytes / 1e6:.1f} MB",
            "baseline": f"raw read of the file {raw_s:.2f} s; RSS before {rss0:.0f} MB",
            "ratio": raw_s / took,
            "target": "streaming: peak RSS <= 256 MB",
            "ok": peak <= 256,
            "raw": {"bytes": size, "seconds": took, "raw_read_s": raw_s, "peak_rss_mb": peak},
        }
    ]


CASES = {
    "flight": case_flight,
    "fixture": case_fixture,
    "big_write": case_big_write,
    "big_extract": case_big_extract,
}


def _child(name: str, quick: bool, tmp: Path) -> list[dict[str, Any]]:
    cmd = [sys.executable, str(HERE / "flight.py"), "--child", name, "--tmp", str(tmp)]
    if quick:
        cmd.append("--quick")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        raise RuntimeError(f"benchmark case {name!r} failed:\n" + "\n".join(tail))
    rows: list[dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke sizes (seconds)")
    ap.add_argument("--markdown", type=Path, help="also write the table to this markdown file")
    ap.add_argument(
        "--only", action="append", choices=("flight", "fixture", "big_extract"), help="only these"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        import warnings

        warnings.simplefilter("ignore")
        rows = CASES[args.child](args.quick, Path(args.tmp))
        print(json.dumps(rows, default=float))
        return 0
    sys.path.insert(0, str(HERE))
    from run import machine, markdown, print_table

    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="replaykit-flight-") as d:
        for name in args.only or ["flight", "fixture", "big_extract"]:
            if name == "big_extract":
                _child("big_write", args.quick, Path(d))
            rows += _child(name, args.quick, Path(d))
    took = time.perf_counter() - t0
    info = machine()
    mode = "quick (smoke sizes)" if args.quick else "full"
    print_table(rows, f"replaykit flight-mode benchmarks, {mode}: {info['cores']} cores")
    if args.markdown:
        text = markdown(rows, info, args.quick, took).replace(
            "benchmarks/run.py", "benchmarks/flight.py"
        )
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
