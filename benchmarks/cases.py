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


def _alternate(
    base: Callable[[int], float], rec: Callable[[int], float], steps: int, rounds: int
) -> tuple[float, float, float, tuple[float, float]]:
    """Time ``base`` and ``rec`` in alternating rounds of ``steps // rounds`` steps each.

    One unmeasured round of each comes first (first block writes, lazy imports, warm
    caches). Returns the median seconds per step of each, the median of the per-round
    ratios ``base / rec`` (a round and its neighbour share the machine's state, so their
    ratio cancels drift that a ratio of overall medians keeps), and that ratio's
    interquartile range, printed so a reader sees the run-to-run spread.
    """
    per = max(1, steps // rounds)
    base(per)
    rec(per)
    b, r, ratios = [], [], []
    for _ in range(rounds):
        tb = base(per) / per
        tr = rec(per) / per
        b.append(tb)
        r.append(tr)
        ratios.append(tb / tr)
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return statistics.median(b), statistics.median(r), statistics.median(ratios), (q[0], q[2])


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


def _throughput_row(
    name: str, env_id: str, steps: int, rounds: int, target: float, tmp: Path
) -> Row:
    import gymnasium as gym

    from replaykit._session.record import RecordingWrapper

    try:
        plain = gym.make(env_id)
        recorded = gym.make(env_id)
    except Exception as exc:  # an optional extra (mujoco) that is not installed
        return _row(name, "skipped", f"{type(exc).__name__}: {exc}"[:60], None, "", None)
    plain.action_space.seed(0)
    plain.reset(seed=0)
    rec = RecordingWrapper(recorded, tmp / f"{env_id}.h5", seed=0)
    rec.reset()
    base_s, rec_s, ratio, (lo, hi) = _alternate(
        _random_loop(plain), _random_loop(rec), steps, rounds
    )
    rec.close()
    added = (rec_s - base_s) * 1e6
    return _row(
        name,
        f"{1 / rec_s:,.0f} steps/s ({added:+.2f} us/step; ratio IQR {lo:.2f}-{hi:.2f})",
        f"{1 / base_s:,.0f} steps/s without replaykit",
        ratio,
        f">= {target:.2f}x",
        ratio >= target,
        ratio_iqr=(lo, hi),
        base_us=base_s * 1e6,
        rec_us=rec_s * 1e6,
        steps=rec.step_count,
    )


def _image_rows(steps: int, reps: int, tmp: Path) -> list[Row]:
    """ALE/Pong-v5 recorded with each compression filter: CPU time of the whole recording.

    Each rep records ``steps`` steps into a new file, close included (blocks are compressed
    as they fill, so a per-round median would skip them), against the same loop unrecorded;
    the median rep is reported with the file size.
    """
    import gymnasium as gym

    from replaykit._session.record import RecordingWrapper

    name = "Recording, ALE/Pong-v5 image obs, compression={}"
    try:
        import ale_py

        gym.register_envs(ale_py)
        gym.make("ALE/Pong-v5").close()
    except Exception as exc:  # the atari extra is not installed
        why = f"{type(exc).__name__}: {exc}"[:60]
        return [_row(name.format(c), "skipped", why, None, "", None) for c in ("None", "lzf")]

    def plain() -> float:
        env = gym.make("ALE/Pong-v5")
        env.action_space.seed(0)
        env.reset(seed=0)
        took = _random_loop(env)(steps)
        env.close()
        return took

    def recorded(comp: str | None, path: Path) -> float:
        t0 = time.process_time()
        rec = RecordingWrapper(gym.make("ALE/Pong-v5"), path, seed=0, compression=comp)
        rec.reset()
        _random_loop(rec)(steps)
        rec.close()
        return time.process_time() - t0

    rows = []
    comps: tuple[str | None, ...] = (None, "lzf", "gzip")
    base, rec_s, sizes = [], {c: [] for c in comps}, {}  # type: ignore[var-annotated]
    for _ in range(reps):
        base.append(plain())
        for comp in comps:
            path = tmp / f"pong-{comp}.h5"
            rec_s[comp].append(recorded(comp, path))
            sizes[comp] = path.stat().st_size
            path.unlink()
    b = statistics.median(base)
    for comp in comps:
        r = statistics.median(rec_s[comp])
        rows.append(
            _row(
                name.format(comp),
                f"{steps / r:,.0f} steps/s, {sizes[comp] / 1e6:.1f} MB for {steps} steps "
                f"({sizes[comp] / steps / 1e3:.1f} kB/step)",
                f"{steps / b:,.0f} steps/s without replaykit",
                b / r,
                "reported (lossless)",
                None,
                bytes=sizes[comp],
                steps=steps,
                base_s=b,
                rec_s=r,
            )
        )
    return rows


def _mlp_row(steps: int, rounds: int, tmp: Path) -> Row:
    import gymnasium as gym
    import torch

    from replaykit._session.policies import resolve_policy
    from replaykit._session.record import RecordingWrapper
    from replaykit._session.rollout import drive, seed_everything

    # One intra-op thread: the policy's tensors are tiny, and idle pool threads spinning on
    # the second core would add CPU time (what the loops are timed with) unrelated to either.
    torch.set_num_threads(1)
    seed_everything(0)
    plain = gym.make("CartPole-v1")
    plain.action_space.seed(0)
    p_policy = resolve_policy("mlp", plain, 0)
    p_obs = [plain.reset(seed=0)[0]]

    def noop_probe(name: str, value: Any) -> None:
        pass

    def noop_update(**values: Any) -> None:
        pass

    rec = RecordingWrapper(gym.make("CartPole-v1"), tmp / "mlp.h5", seed=0)
    r_policy = resolve_policy("mlp", rec, 0)
    for k, obj in r_policy.state_objects().items():
        rec.track(k, obj)
    r_obs = [rec.reset()[0]]

    # drive() resets at the top of the next iteration after an episode ends; a round
    # boundary passes that on as needs_reset.
    def base(n: int) -> float:
        t0 = time.process_time()
        p_obs[0] = drive(
            plain,
            p_policy,
            n,
            obs=p_obs[0],
            needs_reset=False,
            on_probe=noop_probe,
            on_update=noop_update,
        )
        dt = time.process_time() - t0
        p_obs[0] = plain.reset()[0]
        return dt

    def recd(n: int) -> float:
        t0 = time.process_time()
        r_obs[0] = drive(
            rec,
            r_policy,
            n,
            obs=r_obs[0],
            needs_reset=False,
            on_probe=rec.probe,
            on_update=rec.log_update,
        )
        dt = time.process_time() - t0
        r_obs[0] = rec.reset()[0]
        return dt

    base_s, rec_s, ratio, (lo, hi) = _alternate(base, recd, steps, rounds)
    rec.close()
    return _row(
        "Recording, CartPole-v1 + mlp torch policy (drive loop)",
        f"{1 / rec_s:,.0f} steps/s ({(rec_s - base_s) * 1e6:+.2f} us/step; "
        f"ratio IQR {lo:.2f}-{hi:.2f})",
        f"{1 / base_s:,.0f} steps/s, same loop unrecorded",
        ratio,
        ">= 0.95x",
        ratio >= 0.95,
        ratio_iqr=(lo, hi),
        base_us=base_s * 1e6,
        rec_us=rec_s * 1e6,
    )


def case_throughput(quick: bool, tmp: Path) -> list[Row]:
    """Recording throughput: CartPole random, HalfCheetah random, CartPole + mlp policy."""
    rows = [
        _throughput_row(
            "Recording throughput, CartPole-v1, random actions",
            "CartPole-v1",
            4_000 if quick else 200_000,
            2 if quick else 100,
            0.90,
            tmp,
        ),
        _throughput_row(
            "Recording throughput, HalfCheetah-v5, random actions",
            "HalfCheetah-v5",
            200 if quick else 6_000,
            2 if quick else 60,
            0.97,
            tmp,
        ),
        _mlp_row(400 if quick else 8_000, 2 if quick else 40, tmp),
    ]
    # Image observations (210x160x3 uint8 frames): speed and size per compression filter,
    # the figures behind `replaykit record --compression` defaulting to lzf.
    rows += _image_rows(60 if quick else 3_000, 1 if quick else 3, tmp)
    return rows


# --------------------------------------------------------------------------- snapshots


def _mlp_and_adam(params: int, device: str) -> tuple[Any, Any]:
    """An MLP of about ``params`` parameters and an Adam optimizer that has taken one step."""
    import torch

    width = 4096 if params >= 50_000_000 else 256
    layers = max(1, round(params / (width * width + width)))
    torch.manual_seed(0)
    mods: list[Any] = []
    for _ in range(layers):
        mods += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*mods[:-1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, width, device=device)).sum().backward()
    opt.step()
    model.zero_grad(set_to_none=True)  # grads are not part of the saved state
    return model, opt


def _tensors(model: Any, opt: Any) -> list[Any]:
    out = [t for t in model.state_dict().values()]
    for st in opt.state_dict()["state"].values():
        out += [v for v in st.values() if hasattr(v, "numel") and v.numel() > 1]
    return out


def _best(fn: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        gc.collect()
        # Start each run with no dirty pages queued for disk: otherwise a run pays for the
        # writeback of whatever ran before it (seconds, at random).
        if hasattr(os, "sync"):
            os.sync()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _snapshot_rows(quick: bool, tmp: Path, device: str) -> list[Row]:
    import torch

    from replaykit import provenance
    from replaykit._format import store
    from replaykit._state.modelstate import sharing
    from replaykit._state.snapshot import capture_tracked

    params = 200_000 if quick else 100_000_000
    reps = 2
    model, opt = _mlp_and_adam(params, device)
    tensors = _tensors(model, opt)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    n_params = sum(p.numel() for p in model.parameters())
    tag = f"{n_params / 1e6:.1f}M-param MLP + Adam, {nbytes / 1e9:.2f} GB"
    if device != "cpu":
        tag += f", tensors on {device}"

    raw_path = tmp / "raw.bin"
    torch_path = tmp / "state.pt"
    rk_path = tmp / "snap.h5"

    def raw_write() -> None:
        with open(raw_path, "wb") as f:
            for t in tensors:
                f.write(t.detach().cpu().numpy().data)

    def torch_save() -> None:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, torch_path)

    def rk_save(direct_io: bool | None = None) -> None:
        if rk_path.exists():
            rk_path.unlink()
        # As RecordingWrapper.snapshot does: the tree goes straight to disk, no tensor copies.
        with sharing():
            tree = {
                "model": capture_tracked(model, "model"),
                "optimizer": capture_tracked(opt, "optimizer"),
            }
            with store.RecordingWriter(rk_path, meta={}, provenance=prov, direct_io=direct_io) as w:
                w.write_snapshot("s", tree, {"step": 0, "episode": 0})

    prov = provenance.collect()
    t_raw = _best(raw_write, reps)
    t_torch = _best(torch_save, reps)
    t_direct = _best(lambda: rk_save(direct_io=True), reps)
    t_rk = _best(rk_save, reps)

    buffers = [bytearray(t.numel() * t.element_size()) for t in tensors]

    def raw_read() -> None:
        with open(raw_path, "rb", buffering=0) as f:
            for b in buffers:
                f.readinto(b)

    def torch_load() -> None:
        torch.load(torch_path, weights_only=True)

    def rk_load() -> None:
        with store.Recording(rk_path) as r:
            r.load_snapshot("s")

    t_rread = _best(raw_read, reps)
    t_tload = _best(torch_load, reps)
    t_rload = _best(rk_load, reps)
    gb = nbytes / 1e9
    where = "" if device == "cpu" else f" [{device}]"
    return [
        _row(
            f"Snapshot save{where}: {tag}",
            f"{t_rk:.2f} s ({gb / t_rk:.2f} GB/s, {t_torch / t_rk:.2f}x torch.save), "
            "capture + write",
            f"raw write {t_raw:.2f} s; torch.save {t_torch:.2f} s",
            t_raw / t_rk,
            ">= 0.9x raw write, >= 2x torch.save",
            t_raw / t_rk >= 0.9 and t_torch / t_rk >= 2.0,
            raw_s=t_raw,
            torch_s=t_torch,
            replaykit_s=t_rk,
            vs_torch=t_torch / t_rk,
            bytes=nbytes,
        ),
        _row(
            f"Snapshot save{where}, direct_io=True (forced; default picks it under writeback)",
            f"{t_direct:.2f} s ({gb / t_direct:.2f} GB/s)",
            f"raw write {t_raw:.2f} s; torch.save {t_torch:.2f} s",
            t_raw / t_direct,
            "reported",
            None,
            replaykit_s=t_direct,
            vs_torch=t_torch / t_direct,
        ),
        _row(
            f"Snapshot load{where}: same state",
            f"{t_rload:.2f} s ({gb / t_rload:.2f} GB/s), checksums verified",
            f"raw read {t_rread:.2f} s; torch.load {t_tload:.2f} s",
            t_tload / t_rload,
            ">= 2x faster than torch.load",
            t_tload / t_rload >= 2.0,
            raw_s=t_rread,
            torch_s=t_tload,
            replaykit_s=t_rload,
            vs_raw=t_rread / t_rload,
        ),
    ]


def case_snapshot(quick: bool, tmp: Path) -> list[Row]:
    """Snapshot save and load of a large MLP + Adam, against raw I/O and torch.save/load."""
    return _snapshot_rows(quick, tmp, "cpu")


def case_snapshot_gpu(quick: bool, tmp: Path) -> list[Row]:
    """The snapshot benchmark with the model and optimizer on CUDA (skipped without a GPU)."""
    import torch

    if not torch.cuda.is_available():
        return [_row("Snapshot save/load [cuda]", "skipped", "no CUDA device", None, "", None)]
    return _snapshot_rows(quick, tmp, "cuda")


def case_small_restore(quick: bool, tmp: Path) -> list[Row]:
    """Restore of a small snapshot (CartPole + mlp policy + Adam), as a test fixture would."""
    import gymnasium as gym

    from replaykit._session.policies import resolve_policy
    from replaykit._session.replay import restore
    from replaykit._session.rollout import record_rollout

    path = tmp / "small.h5"
    record_rollout("CartPole-v1", "mlp", seed=0, steps=120, out=path, snapshot_at=[100])
    env = gym.make("CartPole-v1")
    policy = resolve_policy("mlp", env, 0)
    track = policy.state_objects()
    n = 20 if quick else 200

    def once() -> None:
        rep = restore(path, 0, env=env, track=track)
        rep.close()

    once()  # first call imports lazily-loaded modules; the target is "after import"
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times) * 1e3
    mean = statistics.mean(times) * 1e3
    return [
        _row(
            "Small snapshot restore (CartPole + small MLP + Adam)",
            f"{med:.2f} ms median, {mean:.2f} ms mean ({n} restores)",
            "-",
            None,
            "<= 5 ms per restore",
            med <= 5.0,
            median_ms=med,
            mean_ms=mean,
        )
    ]


# --------------------------------------------------------------------------- diff, file size


def _record_cartpole(path: Path, steps: int, flip_last: bool, compression: str | None) -> None:
    """Record ``steps`` seeded random CartPole steps; ``flip_last`` changes the last action."""
    import gymnasium as gym

    from replaykit._session.record import RecordingWrapper

    rec = RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, compression=compression)
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
    from replaykit._format.store import Recording

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
    for comp in (None, "lzf", "gzip"):
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
    """diff_recordings of two n-step recordings differing at the last step (this process only)."""
    from replaykit._analysis.compare import diff_recordings

    a, b = tmp / f"a{n}.h5", tmp / f"b{n}.h5"
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    res = diff_recordings(a, b)
    took = time.perf_counter() - t0
    first = res.first
    found = first is not None and first.key == "action" and first.row == n - 1
    return [
        {
            "diff_s": took,
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
    from replaykit._analysis.report import analyze, write_report

    path = tmp / f"a{n}.h5"
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    found = analyze(path, pictures=False)
    findings_s = time.perf_counter() - t0
    rss_findings = peak_rss_mb()
    t0 = time.perf_counter()
    _, files = write_report(path, tmp / f"report{n}", force=True)
    report_s = time.perf_counter() - t0
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

    tb, tr, ratio, (q1, q3) = _alternate(base, rec, rounds, rounds)
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


CASES: dict[str, Callable[..., list[Row]]] = {
    "sb3": case_sb3,
    "throughput": case_throughput,
    "snapshot": case_snapshot,
    "snapshot_gpu": case_snapshot_gpu,
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
