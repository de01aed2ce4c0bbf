"""Every bad input gives one line: a ReplaykitError subclass saying what, where, how to fix.

Each case asserts the error class and the message's content (what was expected or
found, where: the file/object or the key, and a fix), and that it is one line.
"""

from __future__ import annotations

import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from conftest import record_tiny, tiny_model

import replaykit.errors as E
from replaykit import provenance
from replaykit._analysis.check import validate_file
from replaykit._format import layout as F
from replaykit._format.store import Recording, RecordingWriter
from replaykit._session.replay import restore
from replaykit._state import rng

FIX = (
    r"(record (it )?again|re-record|upgrade|build the object|pass |install|use a good copy"
    r"|check the path|record one|written by|on_drift)"
)


def one_line(exc: BaseException, *patterns: str) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in {msg!r}"
    return msg


@pytest.fixture(scope="module")
def opt_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recording tracking a model and an Adam optimizer that has taken a step."""
    from replaykit._session.record import RecordingWrapper

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    path = tmp_path_factory.mktemp("opt") / "opt.h5"
    env = RecordingWrapper(
        gym.make("CartPole-v1"), path, seed=1, track={"model": model, "opt": opt}, snapshot_at=[3]
    )
    env.reset()
    for _ in range(6):
        env.step(0)
    env.close()
    return path


def _model(widths: tuple[int, int, int] = (4, 8, 2), dtype: Any = torch.float32) -> Any:
    return torch.nn.Sequential(
        torch.nn.Linear(widths[0], widths[1]), torch.nn.Linear(widths[1], widths[2])
    ).to(dtype)


def _restore_opt(path: Path, model: Any, opt: Any = None) -> Any:
    if opt is None:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return restore(path, 0, track={"model": model, "opt": opt})


# --------------------------------------------------------------------------- model / optimizer


def test_model_shape(opt_recording: Path) -> None:
    with pytest.raises(E.StateMismatchError) as ei:
        _restore_opt(opt_recording, _model((4, 16, 2)))
    one_line(ei.value, r"model", r"shape", r"8", r"16", FIX)


def test_model_dtype(opt_recording: Path) -> None:
    with pytest.raises(E.StateMismatchError) as ei:
        _restore_opt(opt_recording, _model(dtype=torch.float64))
    one_line(ei.value, r"model", r"float32", r"float64", FIX)


def test_model_missing_key(opt_recording: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8))
    with pytest.raises(E.StateMismatchError) as ei:
        _restore_opt(opt_recording, model)
    one_line(ei.value, r"model", r"1\.(weight|bias)", FIX)


def test_model_extra_key(opt_recording: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2), torch.nn.Linear(2, 2))
    with pytest.raises(E.StateMismatchError) as ei:
        _restore_opt(opt_recording, model)
    one_line(ei.value, r"model", r"2\.(weight|bias)", FIX)


def test_optimizer_param_groups(opt_recording: Path) -> None:
    model = _model()
    opt = torch.optim.Adam(
        [
            {"params": [model[0].weight, model[0].bias]},
            {"params": [model[1].weight, model[1].bias]},
        ],
        lr=1e-3,
    )
    with pytest.raises(E.StateMismatchError) as ei:
        _restore_opt(opt_recording, model, opt)
    one_line(ei.value, r"opt", r"group", FIX)


def test_optimizer_type(opt_recording: Path) -> None:
    model = _model()
    with pytest.raises(E.StateMismatchError) as ei:
        _restore_opt(opt_recording, model, torch.optim.SGD(model.parameters(), lr=1e-3))
    one_line(ei.value, r"opt", r"Adam|SGD", FIX)


def test_optimizer_state_shape(opt_recording: Path) -> None:
    # Same number of parameters per group, different shapes: Adam's moments do not fit.
    model = _model((4, 16, 2))
    with pytest.raises(E.StateMismatchError) as ei:
        _restore_opt(opt_recording, model)
    one_line(ei.value, r"shape", FIX)


def test_tracked_object_missing(opt_recording: Path) -> None:
    with pytest.raises(E.RestoreError) as ei:
        restore(opt_recording, 0, track={"model": _model()})
    one_line(ei.value, r"opt")


def test_tracked_object_unknown(opt_recording: Path) -> None:
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.raises(E.RestoreError) as ei:
        restore(opt_recording, 0, track={"model": model, "opt": opt, "extra": _model()})
    one_line(ei.value, r"extra")


# --------------------------------------------------------------------------- RNG state


def test_numpy_generator_state_size() -> None:
    tree = rng.capture_generator(np.random.Generator(np.random.MT19937(0)))
    bad = _replace_first_array(tree, lambda a: a[:-1])
    with pytest.raises(E.StateMismatchError) as ei:
        rng.restore_generator(np.random.Generator(np.random.MT19937(1)), bad)
    one_line(ei.value, r"does not match the snapshot", r"624|623", FIX)


def test_numpy_generator_wrong_kind() -> None:
    tree = rng.capture_generator(np.random.Generator(np.random.MT19937(0)))
    with pytest.raises(E.StateMismatchError) as ei:
        rng.restore_generator(np.random.default_rng(1), tree)
    one_line(ei.value, r"recorded 'MT19937', got 'PCG64'", FIX)


def test_legacy_randomstate_dtype() -> None:
    tree = rng.capture_generator(np.random.RandomState(0))
    bad = _replace_first_array(tree, lambda a: a.astype(np.float64))
    with pytest.raises(E.StateMismatchError) as ei:
        rng.restore_generator(np.random.RandomState(1), bad)
    one_line(ei.value, r"float64|dtype", FIX)


def test_torch_generator_state_size() -> None:
    tree = rng.capture_generator(torch.Generator().manual_seed(0))
    bad = _replace_first_array(tree, lambda a: a[:10])
    with pytest.raises(E.StateMismatchError) as ei:
        rng.restore_generator(torch.Generator(), bad)
    one_line(ei.value, r"torch", r"\d+", FIX)


def test_python_random_wrong_type() -> None:
    tree = rng.capture_generator(np.random.default_rng(0))
    with pytest.raises(E.StateMismatchError) as ei:
        rng.restore_generator(random.Random(0), tree)
    one_line(ei.value, r"python\.Random", FIX)


def _replace_first_array(tree: Any, fn: Any) -> Any:
    done = [False]

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(walk(v) for v in x)
        if isinstance(x, torch.Tensor) and not done[0]:
            done[0] = True
            return torch.from_numpy(fn(x.numpy()).copy())
        if isinstance(x, np.ndarray) and not done[0] and x.size > 1:
            done[0] = True
            return fn(x)
        return x

    out = walk(tree)
    assert done[0]
    return out


# --------------------------------------------------------------------------- env


def test_env_id_mismatch(tiny_recording: Path) -> None:
    with pytest.raises(E.StateMismatchError) as ei:
        restore(tiny_recording, 0, env=gym.make("MountainCar-v0"), track={"model": tiny_model()})
    one_line(ei.value, r"CartPole-v1", r"MountainCar-v0", FIX)


def test_env_spec_kwargs_mismatch(tiny_recording: Path) -> None:
    env = gym.make("CartPole-v1", sutton_barto_reward=True)
    with pytest.raises(E.StateMismatchError) as ei:
        restore(tiny_recording, 0, env=env, track={"model": tiny_model()})
    one_line(ei.value, r"sutton_barto_reward", FIX)


def test_env_max_steps_mismatch(tiny_recording: Path) -> None:
    env = gym.make("CartPole-v1", max_episode_steps=17)
    with pytest.raises(E.StateMismatchError) as ei:
        restore(tiny_recording, 0, env=env, track={"model": tiny_model()})
    one_line(ei.value, r"17|max_episode_steps", FIX)


# --------------------------------------------------------------------------- provenance drift


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recording whose provenance names other library versions and a CUDA device."""
    real = provenance.collect
    path = tmp_path_factory.mktemp("drift") / "drift.h5"

    def fake(*a: Any, **k: Any) -> Any:
        p = real(*a, **k)
        p["versions"]["torch"] = "1.0.0"
        p["versions"]["numpy"] = "1.0.0"
        p["device"] = {"cuda": "12.1", "cudnn": None, "names": ["NVIDIA H100"]}
        return p

    mp = pytest.MonkeyPatch()
    mp.setattr(provenance, "collect", fake)
    try:
        record_tiny(path)
    finally:
        mp.undo()
    with Recording(path) as rec:
        assert rec.provenance["versions"]["torch"] == "1.0.0"
    return path


def test_drift_error(drifted: Path) -> None:
    with pytest.raises(E.ProvenanceError) as ei:
        restore(drifted, 0, track={"model": tiny_model()}, on_drift="error")
    one_line(ei.value, r"torch", r"1\.0\.0", r"on_drift")


def test_drift_error_names_device(drifted: Path) -> None:
    with pytest.raises(E.ProvenanceError) as ei:
        restore(drifted, 0, track={"model": tiny_model()}, on_drift="error")
    one_line(ei.value, r"device|H100|cuda")


def test_drift_warn(drifted: Path) -> None:
    with pytest.warns(E.ReplaykitWarning, match=r"torch.*1\.0\.0"):
        rep = restore(drifted, 0, track={"model": tiny_model()}, on_drift="warn")
    rep.close()


def test_drift_report_is_silent(drifted: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = restore(drifted, 0, track={"model": tiny_model()})
    rep.close()


def test_drift_bad_policy(tiny_recording: Path) -> None:
    with pytest.raises(E.UsageError) as ei:
        restore(tiny_recording, 0, on_drift="ignore")
    one_line(ei.value, r"on_drift", r"'report', 'warn' or 'error'", r"ignore")


# --------------------------------------------------------------------------- files


def _copy(src: Path, tmp_path: Path, name: str = "c.h5") -> Path:
    dst = tmp_path / name
    shutil.copyfile(src, dst)
    return dst


def test_newer_format_version(tiny_recording: Path, tmp_path: Path) -> None:
    p = _copy(tiny_recording, tmp_path)
    with h5py.File(p, "a") as f:
        f.attrs[F.VERSION_ATTR] = F.FORMAT_VERSION + 1
    with pytest.raises(E.UnsupportedVersionError) as ei:
        Recording(p)
    one_line(
        ei.value,
        re.escape(str(p)),
        rf"version {F.FORMAT_VERSION + 1}",
        rf"reads up to {F.FORMAT_VERSION}",
        r"upgrade replaykit",
    )


def test_older_format_version(tiny_recording: Path, tmp_path: Path) -> None:
    p = _copy(tiny_recording, tmp_path)
    with h5py.File(p, "a") as f:
        f.attrs[F.VERSION_ATTR] = 0
    with pytest.raises(E.UnsupportedVersionError) as ei:
        Recording(p)
    one_line(ei.value, re.escape(str(p)), r"version 0", r"record it again")


def test_missing_provenance(tiny_recording: Path, tmp_path: Path) -> None:
    p = _copy(tiny_recording, tmp_path)
    with h5py.File(p, "a") as f:
        del f.attrs[F.PROVENANCE_ATTR]
    with pytest.raises(E.TruncatedFileError) as ei:
        Recording(p)
    one_line(ei.value, re.escape(str(p)), r"\[/\]", r"'provenance' is missing", r"damaged")


def test_provenance_not_an_object(tmp_path: Path) -> None:
    p = tmp_path / "p.h5"
    with RecordingWriter(p, meta={}, provenance={}) as w:
        w._provenance = []  # type: ignore[assignment]
        w._file.attrs[F.PROVENANCE_ATTR] = "[]"
        w.update_meta()
    with pytest.raises(E.FileFormatError) as ei:
        Recording(p)
    one_line(ei.value, re.escape(str(p)), r"not a JSON object")


def test_truncated_file(tiny_recording: Path, tmp_path: Path) -> None:
    p = tmp_path / "t.h5"
    data = tiny_recording.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(E.TruncatedFileError) as ei:
        Recording(p)
    one_line(ei.value, re.escape(str(p)), r"truncated", r"eof")


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "z.h5"
    p.write_bytes(b"")
    with pytest.raises(E.TruncatedFileError) as ei:
        Recording(p)
    one_line(ei.value, re.escape(str(p)), r"empty \(0 bytes\)")


def test_non_hdf5_file(tmp_path: Path) -> None:
    p = tmp_path / "n.h5"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(E.NotARecordingError) as ei:
        validate_file(p)
    one_line(ei.value, re.escape(str(p)), r"not an HDF5 file", r"replaykit record")


def test_foreign_hdf5_file(tmp_path: Path) -> None:
    p = tmp_path / "foreign.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(E.NotARecordingError) as ei:
        Recording(p)
    one_line(ei.value, re.escape(str(p)), r"replaykit_format", r"not written by replaykit")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(E.NotARecordingError) as ei:
        Recording(tmp_path / "nope.h5")
    one_line(ei.value, r"nope\.h5", r"no such file", r"check the path")


def test_damaged_column(tiny_recording: Path, tmp_path: Path) -> None:
    p = _copy(tiny_recording, tmp_path)
    with h5py.File(p, "a") as f:
        ds = f[F.stream_path(F.STEPS)][F.REWARD]
        ds[3] = 7.0
    with Recording(p) as rec, pytest.raises(E.ChecksumError) as ei:
        rec.stream(F.STEPS).read(F.REWARD)
    one_line(ei.value, re.escape(str(p)), r"\[/streams/steps/reward\]", r"checksum", r"re-record")


def test_damaged_snapshot_attr(tiny_recording: Path, tmp_path: Path) -> None:
    p = _copy(tiny_recording, tmp_path)
    with h5py.File(p, "a") as f:
        g = f[F.SNAPSHOTS_GROUP]
        name = next(iter(g))
        g[name].attrs[F.SNAPSHOT_ATTR] = g[name].attrs[F.SNAPSHOT_ATTR].replace('"step"', '"step" ')
    with Recording(p) as rec, pytest.raises(E.ChecksumError) as ei:
        _ = rec.snapshots
    one_line(ei.value, re.escape(str(p)), r"\[/snapshots/", r"attributes", r"checksum")


def test_commit_record_claims_more_rows(tiny_recording: Path, tmp_path: Path) -> None:
    from replaykit._format.store import _digest

    p = _copy(tiny_recording, tmp_path)
    with h5py.File(p, "a") as f:
        g = f[F.stream_path(F.STEPS)]
        body = F.loads(bytes(g.attrs[F.COMMIT_ATTR]).decode())
        body.pop("crc")
        body["rows"] = 5000
        g.attrs[F.COMMIT_ATTR] = F.dumps({**body, "crc": _digest(F.dumps(body).encode())})
    with Recording(p, verify=False) as rec, pytest.raises(E.TruncatedFileError) as ei:
        rec.stream(F.STEPS).read(F.REWARD)
    one_line(ei.value, re.escape(str(p)), r"\[/streams/steps/reward\]", r"5000", r"damaged")


def test_unknown_snapshot_name(tiny_recording: Path) -> None:
    with Recording(tiny_recording) as rec, pytest.raises(E.UsageError) as ei:
        rec.load_snapshot("nope")
    one_line(ei.value, r"no snapshot 'nope'", r"it has: step-")


def _snapshot_group(f: h5py.File) -> h5py.Group:
    g = f[F.SNAPSHOTS_GROUP]
    return g[next(iter(g))]


def test_damaged_pack_byte(tiny_recording: Path, tmp_path: Path) -> None:
    p = _copy(tiny_recording, tmp_path)
    with h5py.File(p, "a") as f:
        ds = _snapshot_group(f)[F.PACK_DATASET]
        ds[0] = ds[0] ^ 1
    with Recording(p) as rec, pytest.raises(E.ChecksumError) as ei:
        rec.load_snapshot(0)
    one_line(ei.value, re.escape(str(p)), r"/pack\]", r"checksum", r"re-record")


def _edit_checksums(p: Path, edit: Any) -> None:
    with h5py.File(p, "a") as f:
        g = _snapshot_group(f)
        checks = F.loads(g.attrs[F.CHECKSUMS_ATTR])
        edit(checks)
        g.attrs[F.CHECKSUMS_ATTR] = F.dumps(checks)


def test_edited_pack_offset_or_layout(tiny_recording: Path, tmp_path: Path) -> None:
    """How packed bytes are read is covered by the attributes' digest."""

    def shift(checks: dict[str, Any]) -> None:
        key = next(iter(checks[F.PACK_KEY]))
        checks[F.PACK_KEY][key] += 64

    def retype(checks: dict[str, Any]) -> None:
        key = next(k for k, v in checks[F.LAYOUT_KEY].items() if v.startswith("<f8"))
        checks[F.LAYOUT_KEY][key] = "<i8" + checks[F.LAYOUT_KEY][key][3:]

    for i, edit in enumerate((shift, retype)):
        p = _copy(tiny_recording, tmp_path, f"e{i}.h5")
        _edit_checksums(p, edit)
        with Recording(p) as rec, pytest.raises(E.ChecksumError) as ei:
            rec.load_snapshot(0)
        one_line(ei.value, re.escape(str(p)), r"\[/snapshots/", r"attributes", r"checksum")


def test_pack_offset_past_the_end_unverified(tiny_recording: Path, tmp_path: Path) -> None:
    p = _copy(tiny_recording, tmp_path)

    def overrun(checks: dict[str, Any]) -> None:
        key = next(iter(checks[F.PACK_KEY]))
        checks[F.PACK_KEY][key] = 1 << 40

    _edit_checksums(p, overrun)
    with Recording(p, verify=False) as rec, pytest.raises(E.FileFormatError) as ei:
        rec.load_snapshot(0)
    one_line(ei.value, re.escape(str(p)), r"/pack\]", r"overrun", r"damaged")


def test_snapshot_dataset_missing(tiny_recording: Path, tmp_path: Path) -> None:
    p = _copy(tiny_recording, tmp_path)
    with h5py.File(p, "a") as f:
        g = _snapshot_group(f)
        g["extra"] = np.zeros(3)
        del g[F.PACK_DATASET]
    with Recording(p) as rec, pytest.raises(E.ChecksumError) as ei:
        rec.load_snapshot(0)
    one_line(ei.value, re.escape(str(p)), r"\[/snapshots/", r"lacks dataset 'pack'", r"damaged")


def test_damaged_stream_or_snapshot_name(tiny_recording: Path, tmp_path: Path) -> None:
    """A bit flip in a group's name is caught: the names sit under the checksums too."""
    p = _copy(tiny_recording, tmp_path, "s.h5")
    with h5py.File(p, "a") as f:
        f.move(f"{F.STREAMS_GROUP}/{F.RESETS}", f"{F.STREAMS_GROUP}/reseus")
    with Recording(p) as rec, pytest.raises(E.ChecksumError) as ei:
        for name in rec.stream_names:
            rec.stream(name)
    one_line(ei.value, re.escape(str(p)), r"\[/streams/reseus\]", r"'resets'", r"damaged name")
    p = _copy(tiny_recording, tmp_path, "n.h5")
    with h5py.File(p, "a") as f:
        g = f[F.SNAPSHOTS_GROUP]
        name = next(iter(g))
        g.move(name, name + "x")
    with Recording(p) as rec, pytest.raises(E.ChecksumError) as ei:
        _ = rec.snapshots
    one_line(ei.value, re.escape(str(p)), r"\[/snapshots/", r"damaged name")


def test_missing_top_level_group(tiny_recording: Path, tmp_path: Path) -> None:
    for group in (F.STREAMS_GROUP, F.SNAPSHOTS_GROUP):
        p = _copy(tiny_recording, tmp_path, f"{group}.h5")
        with h5py.File(p, "a") as f:
            f.move(group, "elsewhere")
        with Recording(p) as rec, pytest.raises(E.FileFormatError) as ei:
            _ = rec.stream_names if group == F.STREAMS_GROUP else rec.snapshots
        one_line(ei.value, re.escape(str(p)), rf"no /{group} group", r"damaged")


def test_stream_without_commit_record(tiny_recording: Path, tmp_path: Path) -> None:
    """Version 2 writers give each stream a record at creation: a missing one is damage."""
    p = _copy(tiny_recording, tmp_path, "c.h5")
    with h5py.File(p, "a") as f:
        g = f[F.stream_path(F.RESETS)]
        g.attrs["coMmit"] = g.attrs[F.COMMIT_ATTR]
        del g.attrs[F.COMMIT_ATTR]
    with Recording(p) as rec, pytest.raises(E.FileFormatError) as ei:
        rec.has_stream(F.RESETS)
    one_line(ei.value, re.escape(str(p)), r"\[/streams/resets\]", r"no commit record", r"damaged")
    with Recording(p) as rec, pytest.raises(E.FileFormatError):
        _ = rec.stream_names


def test_new_stream_has_a_zero_row_record(tmp_path: Path) -> None:
    from replaykit._format.store import RecordingWriter

    p = tmp_path / "z.h5"
    with RecordingWriter(p, meta={}, provenance={}) as w:
        w.stream("early")
    with Recording(p) as rec:
        assert rec.stream_names == ["early"] and rec.stream("early").rows == 0
