"""The measurements behind ``benchmarks/run.py``; each runs in a child process of its own.

Every case returns a list of row dicts (``name``, ``measure``, ``baseline``, ``ratio``,
``target``, ``ok``, plus raw numbers) and is timed against a baseline measured in the same
process, in alternating rounds, so that machine-wide drift cancels out of the ratio.
Throughput loops are timed with ``time.process_time`` (CPU time of this process, which
includes HDF5's work but not other tenants of a shared machine); I/O with wall time.
"""

from __future__ import annotations

import gc
import io
import os
import resource
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Row = dict[str, Any]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, from the OS (Linux: KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _row(
    name: str,
    measure: str,
    baseline: str,
    ratio: float | None,
    target: str,
    ok: bool | None,
    **raw: Any,
) -> Row:
    return {
        "name": name,
        "measure": measure,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "ok": ok,
        "raw": raw,
    }


# --------------------------------------------------------------------------- throughput
#
# Every replaykit call below is a public name (``replaykit.RecordingWrapper``, ``.track``,
# ``.snapshot``, ``replaykit.restore``, ...), the calls the README shows;
# tests/test_benchmarks_smoke.py checks that by AST and by spying on them in a --quick run.


def _alternate(
    loops: list[Callable[[int], float]], steps: int, rounds: int
) -> tuple[list[float], list[list[float]]]:
    """Time ``loops`` in alternating rounds of ``steps // rounds`` steps each.

    One unmeasured round of each comes first (first block writes, lazy imports, warm
    caches); the loops' order within a round is reversed every round. Returns the median
    seconds per step of each loop and, for each loop, its per-round times (a round and its
    neighbours share the machine's state, so a ratio of two loops' times in one round
    cancels drift that a ratio of overall medians keeps).
    """
    per = max(1, steps // rounds)
    for loop in loops:
        loop(per)
    times: list[list[float]] = [[] for _ in loops]
    order = list(range(len(loops)))
    for _ in range(rounds):
        for k in order:
            times[k].append(loops[k](per) / per)
        # Which loop runs second in a round moved the mlp ratio by up to 2%: swap each round.
        order.reverse()
    return [statistics.median(t) for t in times], times


def _ratio(base: list[float], rec: list[float]) -> tuple[float, tuple[float, float]]:
    """Median of the per-round ratios ``base / rec`` and their interquartile range."""
    ratios = [b / r for b, r in zip(base, rec, strict=True)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return statistics.median(ratios), (q[0], q[2])


def _random_loop(env: Any) -> Callable[[int], float]:
    sample = env.action_space.sample
    step = env.step
    reset = env.reset

    def run(n: int) -> float:
        t0 = time.process_time()
        for _ in range(n):
            _, _, terminated, truncated, _ = step(sample())
            if terminated or truncated:
                reset()
        return time.process_time() - t0

    return run


class MinimalRecorder:
    """The floor: a recording wrapper in plain Python (copy the obs, append the row).

    No file, no checks, no snapshots: what any recorder must at least do per step.
    """

    def __init__(self, env: Any) -> None:
        self.env = env
        self.action_space = env.action_space
        self.rows: list[tuple[Any, ...]] = []

    def reset(self, **kw: Any) -> Any:
        obs, info = self.env.reset(**kw)
        self.rows.append((np.array(obs, copy=True),))
        return obs, info

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.rows.append((np.array(obs, copy=True), action, reward, terminated, truncated))
        if len(self.rows) >= 1 << 16:
            self.rows.clear()  # bounded memory; the copies were made
        return obs, reward, terminated, truncated, info


def _throughput_rows(
    name: str, env_id: str, steps: int, rounds: int, target: float, tmp: Path, floor: bool
) -> list[Row]:
    import gymnasium as gym

    import replaykit

    try:
        plain = gym.make(env_id)
        recorded = gym.make(env_id)
        minimal = MinimalRecorder(gym.make(env_id))
    except Exception as exc:  # an optional extra (mujoco) that is not installed
        return [_row(name, "skipped", f"{type(exc).__name__}: {exc}"[:60], None, "", None)]
    for e in (plain, recorded, minimal.env):
        e.action_space.seed(0)
    plain.reset(seed=0)
    minimal.reset(seed=0)
    rec = replaykit.RecordingWrapper(recorded, tmp / f"{env_id}.h5", seed=0)
    rec.reset()
    loops = [_random_loop(plain), _random_loop(rec)]
    if floor:
        loops.append(_random_loop(minimal))
    med, times = _alternate(loops, steps, rounds)
    rec.close()
    base_s, rec_s = med[0], med[1]
    ratio, (lo, hi) = _ratio(times[0], times[1])
    added = (rec_s - base_s) * 1e6
    rows = []
    if floor:
        floor_s = med[2]
        over = statistics.median((r - m) * 1e6 for r, m in zip(times[1], times[2], strict=True))
        f_ratio, (flo, fhi) = _ratio(times[0], times[2])
        rows.append(
            _row(
                f"{name}: minimal Python recording wrapper (baseline row)",
                f"{1 / floor_s:,.0f} steps/s ({(floor_s - base_s) * 1e6:+.2f} us/step; "
                f"ratio IQR {flo:.2f}-{fhi:.2f})",
                f"{1 / base_s:,.0f} steps/s without recording",
                f_ratio,
                "reported (the floor: copy obs, append row)",
                None,
                base_us=base_s * 1e6,
                floor_us=floor_s * 1e6,
            )
        )
        rows.append(
            _row(
                name,
                f"{1 / rec_s:,.0f} steps/s ({added:+.2f} us/step; {over:+.2f} us/step over the "
                f"minimal wrapper; ratio IQR {lo:.2f}-{hi:.2f})",
                f"{1 / base_s:,.0f} steps/s without replaykit; minimal wrapper "
                f"{1 / floor_s:,.0f} steps/s",
                ratio,
                "<= 1 us/step over the minimal wrapper",
                over <= 1.0,
                ratio_iqr=(lo, hi),
                base_us=base_s * 1e6,
                rec_us=rec_s * 1e6,
                over_floor_us=over,
            )
        )
        return rows
    return [
        _row(
            name,
            f"{1 / rec_s:,.0f} steps/s ({added:+.2f} us/step; ratio IQR {lo:.2f}-{hi:.2f})",
            f"{1 / base_s:,.0f} steps/s without replaykit",
            ratio,
            f">= {target:.2f}x",
            ratio >= target,
            ratio_iqr=(lo, hi),
            base_us=base_s * 1e6,
            rec_us=rec_s * 1e6,
        )
    ]


def _vector_row(n_envs: int, steps: int, rounds: int, tmp: Path) -> Row:
    import gymnasium as gym

    import replaykit

    def make() -> Any:
        return gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * n_envs)

    plain = make()
    plain.action_space.seed(0)
    plain.reset(seed=0)
    inner = make()
    inner.action_space.seed(0)
    rec = replaykit.VectorRecordingWrapper(inner, tmp / "vector.h5", seed=0)
    rec.reset(seed=0)

    def loop(env: Any) -> Callable[[int], float]:
        sample, step = env.action_space.sample, env.step

        def run(n: int) -> float:
            t0 = time.process_time()
            for _ in range(n):
                step(sample())  # sub-envs reset themselves (autoreset)
            return time.process_time() - t0

        return run

    med, times = _alternate([loop(plain), loop(rec)], steps, rounds)
    rec.close()
    ratio, (lo, hi) = _ratio(times[0], times[1])
    return _row(
        f"Recording, SyncVectorEnv of {n_envs} CartPole-v1, random actions",
        f"{n_envs / med[1]:,.0f} env-steps/s ({(med[1] - med[0]) * 1e6:+.1f} us per vector "
        f"step; ratio IQR {lo:.2f}-{hi:.2f})",
        f"{n_envs / med[0]:,.0f} env-steps/s without replaykit",
        ratio,
        ">= 0.95x",
        ratio >= 0.95,
        ratio_iqr=(lo, hi),
    )


def _image_rows(steps: int, reps: int, tmp: Path) -> list[Row]:
    """ALE/Pong-v5 recorded with each compression filter: CPU time of the whole recording.

    Each rep records ``steps`` steps into a new file, close included (blocks are compressed
    as they fill, so a per-round median would skip them), alternating the filters; the
    ratio of each filter is the median of its per-rep ratios to the uncompressed rep. CPU
    time is the whole process's, so deflate's worker thread counts in full (the stricter
    figure); wall time is reported beside it.
    """
    import gymnasium as gym

    import replaykit

    name = "Recording, ALE/Pong-v5 image obs, compression={}"
    # gzip:1 is `replaykit record`'s default.
    comps: tuple[str | None, ...] = (None, "gzip:1", "lzf", "gzip")
    try:
        import ale_py

        gym.register_envs(ale_py)
        gym.make("ALE/Pong-v5").close()
    except Exception as exc:  # the atari extra is not installed
        why = f"{type(exc).__name__}: {exc}"[:60]
        return [_row(name.format(c), "skipped", why, None, "", None) for c in comps]

    def recorded(comp: str | None, path: Path) -> tuple[float, float]:
        t0, w0 = time.process_time(), time.perf_counter()
        rec = replaykit.RecordingWrapper(gym.make("ALE/Pong-v5"), path, seed=0, compression=comp)
        rec.action_space.seed(0)
        rec.reset()
        _random_loop(rec)(steps)
        rec.close()
        return time.process_time() - t0, time.perf_counter() - w0

    try:
        import isal  # noqa: F401

        deflate = "ISA-L"
    except ImportError:
        deflate = "zlib"
    rec_s: dict[str | None, list[float]] = {c: [] for c in comps}
    wall_s: dict[str | None, list[float]] = {c: [] for c in comps}
    sizes: dict[str | None, int] = {}
    recorded(None, tmp / "pong-warm.h5")  # imports, ROM load, isal import
    for _ in range(reps):
        for comp in comps:
            path = tmp / f"pong-{comp}.h5"
            cpu, wall = recorded(comp, path)
            rec_s[comp].append(cpu)
            wall_s[comp].append(wall)
            sizes[comp] = path.stat().st_size
            path.unlink()
    rows = []
    base = rec_s[None]
    for comp in comps:
        r = statistics.median(rec_s[comp])
        ratio = statistics.median(b / x for b, x in zip(base, rec_s[comp], strict=True))
        wall_ratio = statistics.median(
            b / x for b, x in zip(wall_s[None], wall_s[comp], strict=True)
        )
        size_ratio = sizes[comp] / sizes[None]
        if comp == "gzip:1":
            target, ok = (
                ">= 0.90x of uncompressed, file <= 0.25x",
                (ratio >= 0.90 and size_ratio <= 0.25),
            )
        else:
            target, ok = "reported (lossless)", None
        rows.append(
            _row(
                name.format(comp)
                + (f" (the CLI's default; deflate by {deflate})" if comp == "gzip:1" else ""),
                f"{steps / r:,.0f} steps/s in CPU time (wall time: {wall_ratio:.2f}x), "
                f"{sizes[comp] / 1e6:.2f} MB for {steps} steps "
                f"({size_ratio:.3f}x the uncompressed file)",
                f"uncompressed: {steps / statistics.median(base):,.0f} steps/s, "
                f"{sizes[None] / 1e6:.1f} MB",
                ratio,
                target,
                ok,
                bytes=sizes[comp],
                size_ratio=size_ratio,
                steps=steps,
                rec_s=r,
                wall_ratio=wall_ratio,
                deflate=deflate,
            )
        )
    return rows


class _MLPPolicy:
    """A small torch MLP policy trained with REINFORCE at each episode's end.

    ``act`` samples an action and reports the logits through ``on_probe`` (the recorded
    side passes ``rec.probe``); ``end_episode`` takes one Adam step and reports the loss
    through ``on_update`` (``rec.log_update``).
    """

    def __init__(self, seed: int) -> None:
        import torch

        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)
        )
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)
        self.gen = g
        self.logps: list[Any] = []
        self.rewards: list[float] = []

    def act(self, obs: Any, on_probe: Callable[[str, Any], None]) -> int:
        import torch

        logits = self.net(torch.as_tensor(obs))
        on_probe("logits", logits.detach().numpy())
        probs = torch.softmax(logits, -1)
        a = int(torch.multinomial(probs, 1, generator=self.gen))
        self.logps.append(torch.log(probs[a]))
        return a

    def end_episode(self, on_update: Callable[..., Any]) -> None:
        import torch

        ret = torch.tensor(self.rewards[::-1], dtype=torch.float32).cumsum(0).flip(0)
        loss = -(torch.stack(self.logps) * (ret - ret.mean())).sum()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        on_update(loss=np.float32(loss.item()))
        self.logps.clear()
        self.rewards.clear()


def _mlp_row(steps: int, rounds: int, tmp: Path) -> Row:
    import gymnasium as gym
    import torch

    import replaykit

    # One intra-op thread: the policy's tensors are tiny, and idle pool threads spinning on
    # the second core would add CPU time (what the loops are timed with) unrelated to either.
    torch.set_num_threads(1)

    def noop_probe(name: str, value: Any) -> None:
        pass

    def noop_update(**values: Any) -> None:
        pass

    plain = gym.make("CartPole-v1")
    p_policy = _MLPPolicy(0)
    rec = replaykit.RecordingWrapper(gym.make("CartPole-v1"), tmp / "mlp.h5", seed=0)
    r_policy = _MLPPolicy(0)
    rec.track("model", r_policy.net)
    rec.track("optimizer", r_policy.opt)

    def loop(env: Any, policy: _MLPPolicy, on_probe: Any, on_update: Any) -> Callable[[int], float]:
        state = [env.reset(seed=0)[0]]

        def run(n: int) -> float:
            t0 = time.process_time()
            obs = state[0]
            for _ in range(n):
                a = policy.act(obs, on_probe)
                obs, r, term, trunc, _ = env.step(a)
                policy.rewards.append(float(r))
                if term or trunc:
                    policy.end_episode(on_update)
                    obs, _ = env.reset()
            state[0] = obs
            return time.process_time() - t0

        return run

    med, times = _alternate(
        [
            loop(plain, p_policy, noop_probe, noop_update),
            loop(rec, r_policy, rec.probe, rec.log_update),
        ],
        steps,
        rounds,
    )
    rec.close()
    ratio, (lo, hi) = _ratio(times[0], times[1])
    return _row(
        "Recording, CartPole-v1 + mlp torch policy (probes, REINFORCE updates)",
        f"{1 / med[1]:,.0f} steps/s ({(med[1] - med[0]) * 1e6:+.2f} us/step; "
        f"ratio IQR {lo:.2f}-{hi:.2f})",
        f"{1 / med[0]:,.0f} steps/s, same loop unrecorded",
        ratio,
        ">= 0.95x",
        ratio >= 0.95,
        ratio_iqr=(lo, hi),
        base_us=med[0] * 1e6,
        rec_us=med[1] * 1e6,
    )


def case_throughput(quick: bool, tmp: Path) -> list[Row]:
    """Recording throughput: CartPole, HalfCheetah, mlp policy, vector env, Pong images."""
    rows = _throughput_rows(
        "Recording throughput, CartPole-v1, random actions",
        "CartPole-v1",
        4_000 if quick else 100_000,
        2 if quick else 60,
        0.90,
        tmp,
        floor=True,
    )
    rows += _throughput_rows(
        "Recording throughput, HalfCheetah-v5, random actions",
        "HalfCheetah-v5",
        200 if quick else 6_000,
        2 if quick else 60,
        0.97,
        tmp,
        floor=False,
    )
    rows.append(_mlp_row(400 if quick else 8_000, 2 if quick else 40, tmp))
    rows.append(_vector_row(16, 40 if quick else 2_000, 2 if quick else 40, tmp))
    # Image observations (210x160x3 uint8 frames): speed and size per compression filter,
    # the figures behind `replaykit record --compression` defaulting to gzip:1.
    rows += case_images(quick, tmp)
    return rows


def case_images(quick: bool, tmp: Path) -> list[Row]:
    """The Pong rows of the throughput group alone (``run.py --only images``)."""
    return _image_rows(60 if quick else 800, 1 if quick else 3, tmp)


# --------------------------------------------------------------------------- snapshots


def _mlp_and_adam(params: int, device: str, seed: int = 0) -> tuple[Any, Any]:
    """An MLP of about ``params`` parameters and an Adam optimizer that has taken one step."""
    import torch

    width = 4096 if params >= 50_000_000 else 256
    layers = max(1, round(params / (width * width + width)))
    torch.manual_seed(seed)
    mods: list[Any] = []
    for _ in range(layers):
        mods += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*mods[:-1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, width, device=device)).sum().backward()
    opt.step()
    model.zero_grad(set_to_none=True)  # grads are not part of the saved state
    return model, opt


def _fresh(params: int, device: str) -> tuple[Any, Any]:
    """Freshly built objects to restore into: the same MLP (other weights), an empty Adam."""
    import torch

    width = 4096 if params >= 50_000_000 else 256
    layers = max(1, round(params / (width * width + width)))
    mods: list[Any] = []
    with torch.device(device):
        for _ in range(layers):
            mods += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*mods[:-1])
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def _flat_tensors(model: Any, opt: Any) -> dict[str, Any]:
    """Every tensor of the model and optimizer state, flat, as safetensors stores them."""
    out = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"opt.{i}.{k}"] = v.contiguous()
    return out


def _unflat_into(flat: dict[str, Any], model: Any, opt: Any, groups: Any) -> None:
    """Load safetensors' flat dict back with ``load_state_dict`` (the baseline's load half)."""
    model.load_state_dict({k[6:]: v for k, v in flat.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for k, v in flat.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def _warm(path: Path) -> None:
    """Read ``path`` once so its pages are in the page cache."""
    buf = bytearray(8 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def _sync() -> None:
    # Start each run with no dirty pages queued for disk: otherwise a run pays for the
    # writeback of whatever ran before it (seconds, at random).
    gc.collect()
    if hasattr(os, "sync"):
        os.sync()


def _rounds(
    fns: dict[str, Callable[[], Any]], reps: int, setup: Callable[[], Any]
) -> dict[str, list[float]]:
    """Run ``fns`` in alternating rounds (``setup`` and ``os.sync`` before each, untimed)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            setup()
            _sync()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def _med_ratio(base: list[float], ours: list[float]) -> tuple[float, float, float]:
    """Median of per-round ratios ``base / ours``, with their min and max (the spread)."""
    r = [b / o for b, o in zip(base, ours, strict=True)]
    return statistics.median(r), min(r), max(r)


def _snapshot_rows(quick: bool, tmp: Path, device: str) -> list[Row]:  # noqa: C901, PLR0915
    import gymnasium as gym
    import torch
    import xxhash

    import replaykit

    try:
        import safetensors.torch as st
    except ImportError:  # the bench extra is not installed
        st = None

    params = 200_000 if quick else 100_000_000
    reps = 2 if quick else 3
    model, opt = _mlp_and_adam(params, device)
    flat = _flat_tensors(model, opt)
    nbytes = sum(t.numel() * t.element_size() for t in flat.values())
    n_params = sum(p.numel() for p in model.parameters())
    tag = f"{n_params / 1e6:.1f}M-param MLP + Adam, {nbytes / 1e9:.2f} GB"
    if device != "cpu":
        tag += f", tensors on {device}"
    groups = opt.state_dict()["param_groups"]

    raw_path = tmp / "raw.bin"
    torch_path = tmp / "state.pt"
    st_path = tmp / "state.safetensors"
    rk_path = tmp / "snap.h5"
    tensors = list(flat.values())

    def raw_write() -> None:
        with open(raw_path, "wb") as f:
            for t in tensors:
                f.write(t.detach().cpu().numpy().data)

    def torch_save() -> None:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, torch_path)

    def st_save() -> None:
        assert st is not None
        st.save_file(flat, st_path)

    # The public path, as the README shows it: a RecordingWrapper tracking the model and
    # optimizer, snapshot() in the middle of an episode. The wrapper is built (and the
    # file created) outside the timer, as in a training run that snapshots now and then.
    live: dict[str, Any] = {}

    def rk_setup(direct_io: bool | None = None) -> None:
        for p in (rk_path, raw_path, torch_path, st_path):
            if p.exists():
                p.unlink()
        rec = replaykit.RecordingWrapper(
            gym.make("CartPole-v1"), rk_path, seed=0, direct_io=direct_io
        )
        rec.track("model", model)
        rec.track("optimizer", opt)
        rec.reset()
        rec.step(rec.action_space.sample())
        live["rec"] = rec

    def rk_save() -> None:
        live["rec"].snapshot("big")

    def rk_close() -> None:
        if "rec" in live:
            live.pop("rec").close()

    save_fns: dict[str, Callable[[], Any]] = {"raw": raw_write, "torch": torch_save}
    if st is not None:
        save_fns["safetensors"] = st_save
    save_fns["replaykit"] = rk_save

    def setup_save() -> None:
        rk_close()
        rk_setup()

    save_t = _rounds(save_fns, reps, setup_save)
    rk_close()
    # direct_io=True forced: reported.
    direct_t = []
    for _ in range(reps if not quick else 1):
        rk_setup(direct_io=True)
        _sync()
        t0 = time.perf_counter()
        rk_save()
        direct_t.append(time.perf_counter() - t0)
        rk_close()
    # Files for the load rounds, written once (the page cache holds them after os.sync).
    rk_setup()
    rk_save()
    rk_close()
    raw_write()
    torch_save()
    if st is not None:
        st_save()

    fresh: dict[str, Any] = {}
    env = gym.make("CartPole-v1")

    def load_setup() -> None:
        fresh.clear()
        m, o = _fresh(params, device)
        fresh["model"], fresh["optimizer"] = m, o
        # Every file starts in the page cache, as one just written by a training run does
        # (a snapshot written with direct I/O, or evicted since, would otherwise be read from
        # the disk while the baselines' files are not): page-cache numbers for all.
        for path in (rk_path, torch_path, st_path):
            if path.exists():
                _warm(path)

    def raw_read() -> None:
        with open(raw_path, "rb", buffering=0) as f:
            for t in fresh["model"].state_dict().values():
                f.readinto(t.detach().cpu().numpy().data)

    def torch_load() -> None:
        sd = torch.load(torch_path, weights_only=True, map_location=device)
        fresh["model"].load_state_dict(sd["model"])
        fresh["optimizer"].load_state_dict(sd["opt"])

    def st_load() -> None:
        assert st is not None
        _unflat_into(
            st.load_file(st_path, device=device), fresh["model"], fresh["optimizer"], groups
        )

    def st_load_read() -> None:
        # The comparable baseline: ``load_file`` maps the file and hands back views of it, so
        # the Adam moments are only read when first touched, after the timer of st_load. A
        # verified restore reads and hashes every byte; here every byte of the loaded state
        # is read once too (hashed with xxh3, the hash replaykit verifies with).
        st_load()
        h = xxhash.xxh3_64()
        for t in fresh["model"].state_dict().values():
            h.update(t.detach().contiguous().numpy().data)
        for st_ in fresh["optimizer"].state.values():
            for v in st_.values():
                if isinstance(v, torch.Tensor) and v.numel() > 1:
                    h.update(v.detach().contiguous().numpy().data)
        h.hexdigest()

    def rk_load() -> None:
        # The public restore a test or a debugging script calls, into freshly built objects.
        rep = replaykit.restore(
            rk_path,
            "big",
            env=env,
            track={"model": fresh["model"], "optimizer": fresh["optimizer"]},
        )
        rep.close()

    def rk_load_mmap() -> None:
        # Opt-in: the optimizer's moments mapped copy-on-write, not read (nor verified).
        rep = replaykit.restore(
            rk_path,
            "big",
            env=env,
            track={"model": fresh["model"], "optimizer": fresh["optimizer"]},
            mmap=True,
        )
        rep.close()

    load_fns: dict[str, Callable[[], Any]] = {"torch": torch_load}
    if st is not None:
        load_fns["safetensors"] = st_load
    load_fns["replaykit"] = rk_load
    # The added rows run after the three above, so those keep their order in a round; a
    # replaykit restore stays last (the bit-exactness check below reads its result).
    if device == "cpu":
        if st is not None:
            load_fns["safetensors_read"] = st_load_read
        load_fns["replaykit_mmap"] = rk_load_mmap
    load_t = _rounds(load_fns, reps, load_setup)
    # Correctness, not speed: the last restore gave back the saved tensors bit for bit.
    exact = all(
        torch.equal(a, b)
        for a, b in zip(
            model.state_dict().values(), fresh["model"].state_dict().values(), strict=True
        )
    )
    fresh.clear()

    gb = nbytes / 1e9
    where = "" if device == "cpu" else f" [{device}]"
    rk_s = statistics.median(save_t["replaykit"])
    vs_torch, t_lo, t_hi = _med_ratio(save_t["torch"], save_t["replaykit"])
    vs_raw, _, _ = _med_ratio(save_t["raw"], save_t["replaykit"])
    med = {k: statistics.median(v) for k, v in save_t.items()}
    base = f"raw write {med['raw']:.2f} s; torch.save {med['torch']:.2f} s"
    if device == "cpu":
        ok, target = vs_torch >= 2.0, ">= 2x torch.save"
    else:  # the GPU row: against the device-to-host copy + raw write it cannot avoid
        ok, target = vs_raw >= 0.8, ">= 0.8x (device-to-host copy + raw write)"
    spread = f"vs torch.save {t_lo:.2f}-{t_hi:.2f}x"
    if st is not None:
        vs_st, s_lo, s_hi = _med_ratio(save_t["safetensors"], save_t["replaykit"])
        base += f"; safetensors save_file {med['safetensors']:.2f} s"
        if device == "cpu":
            ok = ok and vs_st >= 1.0
            target += ", >= 1x safetensors"
        spread += f", vs safetensors {vs_st:.2f}x ({s_lo:.2f}-{s_hi:.2f})"
    rows = [
        _row(
            f"Snapshot save{where}: {tag}, RecordingWrapper.snapshot()",
            f"{rk_s:.2f} s ({gb / rk_s:.2f} GB/s; {vs_raw:.2f}x raw write; {spread}; "
            f"median of {reps} alternating rounds)",
            base,
            vs_torch,
            target,
            ok,
            save_s=save_t,
            vs_torch=vs_torch,
            bytes=nbytes,
        ),
        _row(
            f"Snapshot save{where}, direct_io=True (forced; default picks it under writeback)",
            f"{statistics.median(direct_t):.2f} s ({gb / statistics.median(direct_t):.2f} GB/s)",
            base,
            statistics.median(save_t["torch"]) / statistics.median(direct_t),
            "reported",
            None,
            replaykit_s=direct_t,
        ),
    ]
    rl_s = statistics.median(load_t["replaykit"])
    lv_torch, l_lo, l_hi = _med_ratio(load_t["torch"], load_t["replaykit"])
    base = f"torch.load + load_state_dict {statistics.median(load_t['torch']):.2f} s"
    ok = lv_torch >= 2.0 and exact
    target = ">= 2x torch.load" + ("" if device == "cpu" else '(map_location="cuda")')
    spread = f"vs torch {l_lo:.2f}-{l_hi:.2f}x"
    if st is not None:
        lv_st, s_lo, s_hi = _med_ratio(load_t["safetensors"], load_t["replaykit"])
        lmed = statistics.median(load_t["safetensors"])
        base += f"; safetensors load_file + load_state_dict {lmed:.2f} s"
        if device == "cpu":
            ok = ok and lv_st >= 1.5
            target += ", >= 1.5x safetensors"
        spread += f"; {lv_st:.2f}x safetensors ({s_lo:.2f}-{s_hi:.2f})"
    rows.append(
        _row(
            f"Snapshot load{where}: same state, replaykit.restore() into fresh objects",
            f"{rl_s:.2f} s ({gb / rl_s:.2f} GB/s; {spread}), checksums verified"
            + ("" if exact else "  WRONG RESULT"),
            base,
            lv_torch,
            target,
            ok,
            load_s=load_t,
            bit_exact=exact,
        )
    )
    if st is not None and device == "cpu":
        rv, r_lo, r_hi = _med_ratio(load_t["safetensors_read"], load_t["replaykit"])
        rmed = statistics.median(load_t["safetensors_read"])
        rows.append(
            _row(
                "Snapshot load, comparable baseline: replaykit.restore() (every byte read and "
                "verified) vs safetensors load_file + load_state_dict + every byte read once",
                f"{rl_s:.2f} s vs {rmed:.2f} s ({rv:.2f}x, rounds {r_lo:.2f}-{r_hi:.2f}x)",
                f"safetensors load_file + load_state_dict, then each tensor's bytes hashed "
                f"(xxh3) once: {rmed:.2f} s",
                rv,
                ">= 1.5x safetensors (bytes read)",
                rv >= 1.5 and exact,
                load_s=load_t["replaykit"],
                safetensors_read_s=load_t["safetensors_read"],
                bit_exact=exact,
            )
        )
    if "replaykit_mmap" in load_t:
        mm_s = statistics.median(load_t["replaykit_mmap"])
        mv_t, _, _ = _med_ratio(load_t["torch"], load_t["replaykit_mmap"])
        measure = f"{mm_s:.2f} s (vs torch.load {mv_t:.2f}x"
        ratio, ok, target = mv_t, None, "reported (opt-in, unverified)"
        if st is not None:
            mv_s, m_lo, m_hi = _med_ratio(load_t["safetensors"], load_t["replaykit_mmap"])
            measure += f"; vs safetensors' lazy load_file {mv_s:.2f}x, rounds {m_lo:.2f}-{m_hi:.2f}"
            ratio, ok, target = mv_s, mv_s >= 1.5 and exact, ">= 1.5x safetensors (both lazy)"
        rows.append(
            _row(
                "Snapshot load, replaykit.restore(..., mmap=True): the Adam moments mapped "
                "copy-on-write, not read or verified (opt-in)",
                measure + ")",
                f"safetensors load_file + load_state_dict (lazy) "
                f"{statistics.median(load_t.get('safetensors', [float('nan')])):.2f} s",
                ratio,
                target,
                ok,
                load_s=load_t["replaykit_mmap"],
                bit_exact=exact,
            )
        )
    return rows


def case_snapshot(quick: bool, tmp: Path) -> list[Row]:
    """Snapshot save and load of a large MLP + Adam, against torch and safetensors."""
    return _snapshot_rows(quick, tmp, "cpu")


def case_snapshot_gpu(quick: bool, tmp: Path) -> list[Row]:
    """The snapshot benchmark with the model and optimizer on CUDA (not run without a GPU)."""
    import torch

    if not torch.cuda.is_available():
        return [
            _row("Snapshot save/load [cuda]", "not run (no GPU)", "no CUDA device", None, "", None)
        ]
    return _snapshot_rows(quick, tmp, "cuda")


def _rss_mb() -> float:
    """Resident set size of this process now (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def case_snapshot_rss(quick: bool, tmp: Path) -> list[Row]:
    """Peak RSS of a restore into fresh objects, in a process of its own (snap.h5 from before)."""
    import gymnasium as gym
    import torch

    import replaykit

    params = 200_000 if quick else 100_000_000
    env = gym.make("CartPole-v1")
    torch.zeros(1)
    with replaykit.Recording(tmp / "snap.h5") as r:  # h5py and the reader imported
        assert r.snapshots
    gc.collect()
    before = _rss_mb()
    model, opt = _fresh(params, "cpu")
    rep = replaykit.restore(
        tmp / "snap.h5", "big", env=env, track={"model": model, "optimizer": opt}
    )
    rep.close()
    state = sum(t.numel() * t.element_size() for t in _flat_tensors(model, opt).values()) / 2**20
    grown = peak_rss_mb() - before
    return [
        _row(
            "Snapshot load peak RSS (restore child, OS getrusage)",
            f"{grown:.0f} MB above the process before building the objects "
            f"({grown / state:.2f}x the {state:.0f} MB state)",
            f"state {state:.0f} MB (model + Adam moments)",
            grown / state,
            "<= 1.15x the state size",
            grown / state <= 1.15,
            grown_mb=grown,
            state_mb=state,
        )
    ]


def case_small_restore(quick: bool, tmp: Path) -> list[Row]:
    """Restore of a small snapshot (CartPole + small MLP + Adam), as a test fixture would."""
    import gymnasium as gym
    import torch

    import replaykit

    def record(path: Path) -> None:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
        opt = torch.optim.Adam(net.parameters())
        rec = replaykit.RecordingWrapper(
            gym.make("CartPole-v1"), path, seed=0, track={"model": net, "optimizer": opt}
        )
        rec.action_space.seed(0)
        rec.reset()
        for i in range(120):
            if i == 100:
                net(torch.ones(4)).sum().backward()
                opt.step()
                rec.snapshot()
            _, _, term, trunc, _ = rec.step(rec.action_space.sample())
            if term or trunc:
                rec.reset()
        rec.close()

    warm, path = tmp / "warm.h5", tmp / "small.h5"
    record(warm)
    record(path)
    # The first restore of a file in a process is one sample per file: take it on a few
    # byte-identical copies (each a file this process has not opened) and report the median.
    firsts_at = [tmp / f"first{i}.h5" for i in range(5)]
    for p in firsts_at:
        shutil.copyfile(path, p)
    env = gym.make("CartPole-v1")
    net = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
    track = {"model": net, "optimizer": torch.optim.Adam(net.parameters())}
    n = 20 if quick else 200

    wall: list[float] = []

    def once(p: Path) -> float:
        # CPU time of this process (as the throughput rows): on a shared machine wall time
        # adds however long the scheduler kept the process waiting. Wall time is kept too.
        w0, t0 = time.perf_counter(), time.process_time()
        rep = replaykit.restore(p, 0, env=env, track=track)
        rep.close()
        t1, w1 = time.process_time(), time.perf_counter()
        wall.append(w1 - w0)
        return t1 - t0

    once(warm)  # imports lazily-loaded modules; the targets are "after import"
    firsts = [once(p) * 1e3 for p in (path, *firsts_at)]
    first_wall = statistics.median(wall[1:]) * 1e3
    first = statistics.median(firsts)
    wall.clear()
    times = []
    for _ in range(n):
        t0 = time.process_time()
        w0 = time.perf_counter()
        rep = replaykit.restore(path, 0, env=env, track=track)
        rep.close()
        wall.append(time.perf_counter() - w0)
        times.append(time.process_time() - t0)
    med = statistics.median(times) * 1e3
    med_wall = statistics.median(wall) * 1e3
    q = statistics.quantiles(times, n=4)
    return [
        _row(
            "Small snapshot restore (CartPole + small MLP + Adam), replaykit.restore()",
            f"first {first:.2f} ms CPU (median of {len(firsts)} files' first restores, "
            f"{min(firsts):.2f}-{max(firsts):.2f}; wall {first_wall:.2f}); then {med:.2f} ms "
            f"CPU median (IQR {q[0] * 1e3:.2f}-{q[2] * 1e3:.2f}; wall {med_wall:.2f}; {n} "
            "restores of one file)",
            "-",
            None,
            "first <= 5 ms, later <= 2 ms median",
            first <= 5.0 and med <= 2.0,
            median_ms=med,
            first_ms=first,
            firsts_ms=firsts,
            median_wall_ms=med_wall,
            first_wall_ms=first_wall,
        )
    ]


# --------------------------------------------------------------------------- CLI


def _cli(*args: str) -> float:
    """Wall time of the ``replaykit`` console script with ``args`` (its exit code ignored)."""
    import subprocess

    exe = Path(sys.executable).with_name("replaykit")
    t0 = time.perf_counter()
    subprocess.run([str(exe), *args], capture_output=True, check=False)
    return time.perf_counter() - t0


def _interp() -> float:
    import subprocess

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-I", "-c", "pass"], check=False)
    return time.perf_counter() - t0


def case_cli(quick: bool, tmp: Path) -> list[Row]:
    """CLI latency through the console script: check of a small recording, input errors."""
    import gymnasium as gym

    import replaykit

    path = tmp / "cli.h5"
    rec = replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, snapshot_at=[50])
    rec.action_space.seed(0)
    rec.reset()
    for _ in range(2_000 if quick else 6_000):
        _, _, term, trunc, _ = rec.step(rec.action_space.sample())
        if term or trunc:
            rec.reset()
    rec.close()
    reps = 3 if quick else 5
    start, check, missing, bad_env = [], [], [], []
    for _ in range(reps):
        start.append(_interp())
        check.append(_cli("check", str(path)))
        missing.append(_cli("replay", str(tmp / "no-such-file.h5")))
        bad_env.append(_cli("record", "NoSuchEnv-v0", "--out", str(tmp / "never.h5")))
    s = statistics.median(start)
    c = statistics.median(check)
    # The check runs the CLI process and one sandboxed child: two interpreter starts.
    own = c - 2 * s
    kb = path.stat().st_size / 1e3
    err = max(statistics.median(missing), statistics.median(bad_env))
    return [
        _row(
            f"replaykit check of a {kb:.0f} kB recording (sandboxed), console script",
            f"{c:.2f} s in all; {own:.2f} s of its own",
            f"interpreter start {s:.3f} s (x2: CLI + sandbox child)",
            None,
            "<= 0.5 s on top of interpreter start",
            own <= 0.5,
            check_s=check,
            start_s=start,
            own_s=own,
        ),
        _row(
            "Time to report an input error (missing file; bad env id), console script",
            f"missing file {statistics.median(missing):.2f} s; bad env id "
            f"{statistics.median(bad_env):.2f} s",
            f"interpreter start {s:.3f} s",
            None,
            "<= 0.5 s",
            err <= 0.5,
            missing_s=missing,
            bad_env_s=bad_env,
            error_s=err,
        ),
    ]


# --------------------------------------------------------------------------- diff, file size


def _record_cartpole(path: Path, steps: int, flip_last: bool, compression: str | None) -> None:
    """Record ``steps`` seeded random CartPole steps; ``flip_last`` changes the last action."""
    import gymnasium as gym

    import replaykit

    rec = replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, compression=compression)
    sample = rec.env.action_space.sample
    rec.reset()
    step, reset = rec.step, rec.reset
    for i in range(steps):
        a = sample()
        if flip_last and i == steps - 1:
            a = np.int64(1 - a)
        _, _, term, trunc, _ = step(a)
        if term or trunc:
            reset()
    rec.close()


def case_make_recordings(quick: bool, tmp: Path) -> list[Row]:
    """Write the recordings the diff and file-size rows use (rows: file sizes)."""
    from replaykit import Recording

    sizes = (2_000, 20_000) if quick else (100_000, 1_000_000)
    for n in sizes:
        _record_cartpole(tmp / f"a{n}.h5", n, False, None)
        _record_cartpole(tmp / f"b{n}.h5", n, True, None)
    big = sizes[-1]
    raw = 0
    with Recording(tmp / f"a{big}.h5") as r:
        for sname in r.stream_names:
            s = r.stream(sname)
            for d in s.columns.values():
                row_bytes = np.dtype(d["dtype"]).itemsize * int(np.prod(d["shape"]))
                raw += s.rows * (row_bytes + (1 if d.get("optional") else 0))
    rows = []
    label = f"{big // 1000}k" if big < 1_000_000 else f"{big // 1_000_000}M"
    for comp in (None, "gzip:1", "lzf", "gzip"):
        p = tmp / f"a{big}.h5"
        if comp is not None:
            p = tmp / f"c{big}-{comp}.h5"
            t0 = time.perf_counter()
            _record_cartpole(p, big, False, comp)
            took = time.perf_counter() - t0
        size = p.stat().st_size
        rows.append(
            _row(
                f"File size, {label}-step CartPole recording, compression={comp}",
                f"{size / 1e6:.1f} MB ({size / big:.1f} B/step)",
                f"{raw / 1e6:.1f} MB raw array bytes",
                size / raw,
                "reported (lossless)",
                None,
                bytes=size,
                raw_bytes=raw,
                record_s=took if comp else None,
            )
        )
    return rows


def case_diff(quick: bool, tmp: Path, n: int) -> list[Row]:
    """diff_recordings of two n-step recordings differing at the last step (this process only).

    The first call in the process also imports h5py and replaykit's reading modules (~0.05 s
    on an idle machine); it is reported as ``first_call_s``. ``diff_s`` is the median of
    three calls after it, the diff's own work, which the raw-read baseline is compared with.
    """
    from replaykit import diff_recordings

    a, b = tmp / f"a{n}.h5", tmp / f"b{n}.h5"
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    res = diff_recordings(a, b)
    first_call = time.perf_counter() - t0
    took = []
    for _ in range(3):
        t0 = time.perf_counter()
        again = diff_recordings(a, b)
        took.append(time.perf_counter() - t0)
        assert again.first == res.first
    first = res.first
    found = first is not None and first.key == "action" and first.row == n - 1
    return [
        {
            "diff_s": statistics.median(took),
            "first_call_s": first_call,
            "peak_rss_mb": peak_rss_mb(),
            "rss_after_import_mb": rss0,
            "found_last_step": found,
            "first": None if first is None else [first.key, first.row],
        }
    ]


def case_raw_read(quick: bool, tmp: Path, n: int) -> list[Row]:
    """Sequential read of both recording files' bytes (the diff's baseline)."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    t0 = time.perf_counter()
    total = 0
    for p in (tmp / f"a{n}.h5", tmp / f"b{n}.h5"):
        with open(p, "rb", buffering=0) as f:
            while True:
                k = f.readinto(view)
                if not k:
                    break
                total += k
    return [{"read_s": time.perf_counter() - t0, "bytes": total, "read_peak_rss_mb": peak_rss_mb()}]


def case_report(quick: bool, tmp: Path, n: int) -> list[Row]:
    """``replaykit report`` of an n-step recording: findings alone, then page and pictures."""
    import replaykit

    path = tmp / f"a{n}.h5"
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    found = replaykit.report(path)
    findings_s = time.perf_counter() - t0
    rss_findings = peak_rss_mb()
    t0 = time.perf_counter()
    replaykit.report(path, tmp / f"report{n}", force=True)
    report_s = time.perf_counter() - t0
    files = list((tmp / f"report{n}").iterdir())
    return [
        {
            "findings_s": findings_s,
            "report_s": report_s,
            "findings": len(found.findings),
            "files": len(files),
            "rss_after_import_mb": rss0,
            "rss_findings_mb": rss_findings,
            "peak_rss_mb": peak_rss_mb(),
        }
    ]


def case_sb3(quick: bool, tmp: Path) -> list[Row]:
    """SB3 PPO on CartPole: a whole ``learn()`` run with ``ReplaykitCallback`` and without.

    Each round builds a fresh model (seed 0) and trains it for ``total`` timesteps, the
    recorded one writing a new file (open, every step, one update per ``train()``, close):
    the same run with and without the callback, alternating, timed in CPU time.
    """
    import torch
    from stable_baselines3 import PPO

    from replaykit.integrations.sb3 import ReplaykitCallback

    torch.set_num_threads(1)
    n_steps, total, rounds = (32, 64, 2) if quick else (512, 4096, 6)
    files = iter(range(10_000))

    def run(callback: Any) -> float:
        model = PPO(
            "MlpPolicy", "CartPole-v1", n_steps=n_steps, batch_size=64, seed=0, device="cpu"
        )
        t0 = time.process_time()
        model.learn(total, callback=callback)
        return time.process_time() - t0

    def base(_: int) -> float:
        return run(None)

    def rec(_: int) -> float:
        return run(ReplaykitCallback(tmp / f"sb3-{next(files)}.h5"))

    (tb, tr), times = _alternate([base, rec], rounds, rounds)
    ratio, (q1, q3) = _ratio(times[0], times[1])
    return [
        _row(
            f"SB3 PPO CartPole-v1 learn() with ReplaykitCallback ({total} steps a run)",
            f"{tr / total * 1e6:.0f} us/step (recorded)",
            f"{tb / total * 1e6:.0f} us/step (learn() alone)",
            ratio,
            ">= 0.95x",
            ratio >= 0.95,
            iqr=[q1, q3],
            rounds=rounds,
            timesteps_per_run=total,
        )
    ]


# --------------------------------------------------------------------------- sweeps on Ray


def case_sweep(quick: bool, tmp: Path) -> list[Row]:
    """A seed sweep of small recordings and a folder replay: serial vs Ray with 2 workers.

    Ray runs first, cold (the sweep starts and stops a local Ray); then, with a cluster
    running and its workers started, warm Ray rounds alternate with serial rounds recorded
    in this process (the ratio is the median of the rounds' ratios). The driver's peak RSS
    is read before anything is recorded in this process. Every call is a public one:
    ``replaykit.record_sweep``, ``replaykit.replay_folder``, ``replaykit.read_manifest``.
    """
    import ray

    import replaykit

    n = 20 if quick else 100
    steps = 200
    seeds = f"0-{n - 1}"

    def sweep(out: Path, **kw: Any) -> tuple[float, Any]:
        t0 = time.perf_counter()
        r = replaykit.record_sweep(
            "CartPole-v1", "random", seeds, out, steps=steps, snapshot_at=[100], **kw
        )
        assert r.exit_code == 0, r.counts()
        return time.perf_counter() - t0, r

    rounds = 2 if quick else 3
    cold_s, _ = sweep(tmp / "sweep-ray-cold", backend="ray", workers=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    serial_t: list[float] = []
    warm_t: list[float] = []
    replay_serial_t: list[float] = []
    replay_ray_t: list[float] = []
    try:
        sweep(tmp / "sweep-ray-warmup", backend="ray", workers=2)
        driver_mb = peak_rss_mb()  # the driver alone: nothing recorded in this process yet
        # Alternating rounds (Ray, then serial in this process), so load drift cancels out.
        for r in range(rounds):
            t, warm = sweep(tmp / f"sweep-ray-{r}", backend="ray", workers=2)
            warm_t.append(t)
            t, serial = sweep(tmp / f"sweep-serial-{r}", backend="serial")
            serial_t.append(t)
            t0 = time.perf_counter()
            replayed = replaykit.replay_folder(tmp / f"sweep-ray-{r}", backend="ray", workers=2)
            replay_ray_t.append(time.perf_counter() - t0)
            assert replayed.exit_code == 0, replayed.counts()
            t0 = time.perf_counter()
            replayed = replaykit.replay_folder(tmp / f"sweep-serial-{r}", backend="serial")
            replay_serial_t.append(time.perf_counter() - t0)
            assert replayed.exit_code == 0, replayed.counts()
    finally:
        ray.shutdown()
    ratio, lo, hi = _med_ratio(serial_t, warm_t)
    replay_ratio = _med_ratio(replay_serial_t, replay_ray_t)[0]
    warm_s, serial_s = statistics.median(warm_t), statistics.median(serial_t)
    replay_ray_s, replay_serial_s = (
        statistics.median(replay_ray_t),
        statistics.median(replay_serial_t),
    )
    last = rounds - 1
    m = replaykit.read_manifest(tmp / f"sweep-serial-{last}")
    manifest_bytes = (tmp / f"sweep-serial-{last}" / "replaykit-manifest.json").stat().st_size
    file_bytes = statistics.mean(e.bytes for e in m.entries)
    per_file_s = statistics.median(f.seconds for f in serial.files)
    per_file_ray_s = statistics.median(f.seconds for f in warm.files)
    target = "at most 2x on 2 cores (info)"
    return [
        _row(
            f"Sweep of {n} recordings (CartPole-v1, {steps} steps, 1 snapshot): Ray, 2 workers",
            f"warm {warm_s:.1f} s (median of {rounds}); cold (starts Ray) {cold_s:.1f} s",
            f"serial in one process {serial_s:.1f} s",
            ratio,
            target,
            None,
            ratio_range=(lo, hi),
            warm_s=warm_t,
            cold_s=cold_s,
            serial_s=serial_t,
            cold_ratio=serial_s / cold_s,
        ),
        _row(
            f"Folder replay of {n} recordings: Ray, 2 workers (warm)",
            f"{replay_ray_s:.1f} s",
            f"serial {replay_serial_s:.1f} s",
            replay_ratio,
            target,
            None,
            ray_s=replay_ray_t,
            serial_s=replay_serial_t,
        ),
        _row(
            "Sweep per-file costs",
            f"{file_bytes / 1e3:.0f} kB per file; {per_file_s * 1e3:.0f} ms per recording "
            f"(serial; {per_file_ray_s * 1e3:.0f} ms in a Ray task); manifest "
            f"{manifest_bytes / len(m.entries):.0f} B per entry; "
            f"driver peak RSS {driver_mb:.0f} MB",
            "-",
            None,
            "info (docs/SCALE.md)",
            None,
            file_bytes=file_bytes,
            per_file_s=per_file_s,
            per_file_ray_s=per_file_ray_s,
            manifest_bytes_per_entry=manifest_bytes / len(m.entries),
            driver_peak_rss_mb=driver_mb,
        ),
    ]


CASES: dict[str, Callable[..., list[Row]]] = {
    "sweep": case_sweep,
    "sb3": case_sb3,
    "throughput": case_throughput,
    "images": case_images,
    "snapshot": case_snapshot,
    "snapshot_gpu": case_snapshot_gpu,
    "snapshot_rss": case_snapshot_rss,
    "cli": case_cli,
    "small_restore": case_small_restore,
    "make_recordings": case_make_recordings,
    "diff": case_diff,
    "raw_read": case_raw_read,
    "report": case_report,
}


def child_main(name: str, quick: bool, tmp: str, arg: int | None) -> None:
    """Run one case and print its rows as JSON on the last line of stdout."""
    import json

    warnings.simplefilter("ignore")
    sys.stdout = io.TextIOWrapper(os.fdopen(os.dup(1), "wb"), write_through=True)
    fn = CASES[name]
    rows = fn(quick, Path(tmp)) if arg is None else fn(quick, Path(tmp), arg)
    print(json.dumps(rows, default=float))
