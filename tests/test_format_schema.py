"""The attribute schema is closed and documented: every key a writer emits is in FORMAT.md.

Real recordings (a single env with snapshots, probes, updates, reset options and infos; an
env without adapter; a vector env; a training run) are walked attribute by attribute, and
inside every JSON attribute key by key wherever the value has a fixed schema (user data,
env kwargs, reset options, column and array names are data, not schema). Each key must be
spelled in ``replaykit._format.layout``'s key sets and named in ``docs/FORMAT.md`` as
```key```; adding an undocumented key fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from gymnasium.vector import SyncVectorEnv
from gymnasium.wrappers import RecordEpisodeStatistics

import replaykit
from replaykit._format import layout as F
from replaykit._format.sink import RecordingSink
from replaykit._format.store import DatasetInfo, Recording, RecordingWriter, library_versions
from replaykit.errors import ReplaykitWarning

FORMAT_MD = Path(__file__).resolve().parent.parent / "docs" / "FORMAT.md"


class _InfoWrapper(gym.Wrapper[Any, Any, Any, Any]):
    """Adds numeric, nested and non-numeric infos (the last ends up in ``skipped_info``)."""

    def step(self, action: Any) -> Any:
        obs, r, term, trunc, info = self.env.step(action)
        return obs, r, term, trunc, {**info, "x": 1.5, "nested": {"a": 2}, "note": "text"}


replaykit.register_stateless_wrapper(_InfoWrapper)


def _single(path: Path) -> None:
    env = _InfoWrapper(RecordEpisodeStatistics(gym.make("CartPole-v1")))
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight[0, 1] = float("nan")
    rec = replaykit.RecordingWrapper(
        env, path, seed=1, snapshot_at=[0, 3], track={"model": model}, metadata={"who": "t"}
    )
    with pytest.warns(ReplaykitWarning, match="non-finite"):
        rec.reset(options={"low": -0.01})
        for i in range(30):
            rec.probe("logits", np.array([0.5, float("nan") if i == 4 else 1.0]))
            _, _, term, trunc, _ = rec.step(i % 2)
            rec.log_update(loss=float("nan") if i == 5 else 0.1, w=np.ones(2, np.float32))
            if term or trunc:
                rec.reset(options={"high": 0.01})
    rec.set_metadata("note", {"k": 1})
    rec.close()


def _no_adapter(path: Path) -> None:
    import noadapter_env  # noqa: F401

    rec = replaykit.RecordingWrapper(
        gym.make("replaykit-test/NoAdapter-v0"), path, seed=2, snapshot_at=[5]
    )
    rec.reset()
    for _ in range(8):
        rec.step(rec.action_space.sample())
    rec.close()


def _vector(path: Path) -> None:
    vec = SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
    rec = replaykit.VectorRecordingWrapper(vec, path, seed=3, snapshot_at=[4])
    rec.reset(options={"low": -0.02})
    for _ in range(40):
        rec.step(rec.action_space.sample())
    rec.close()


def _training(path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    with replaykit.TrainingRecorder(path, track={"net": net, "opt": opt}) as rec:
        for _ in range(3):
            loss = net(torch.ones(3)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.log_update(loss=loss.detach(), bf=torch.zeros(2, dtype=torch.bfloat16))
        rec.snapshot()


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("schema")
    out = []
    for make in (_single, _no_adapter, _vector, _training):
        path = d / f"{make.__name__.strip('_')}.h5"
        make(path)
        out.append(path)
    return out


# --------------------------------------------------------------------------- the walk
Found = dict[str, set[str]]  # schema object -> keys emitted


def _keys(found: Found, what: str, obj: Any) -> None:
    assert isinstance(obj, dict), f"{what} should be a JSON object, got {obj!r}"
    found.setdefault(what, set()).update(obj)


def _space(found: Found, space: Any) -> None:
    _keys(found, "space", space)
    sub = space.get(F.SPACE_SPACES)
    for s in sub.values() if isinstance(sub, dict) else sub or ():
        _space(found, s)


def _meta(found: Found, meta: dict[str, Any]) -> None:
    _keys(found, "meta", meta)
    spec = meta.get(F.META_ENV_SPEC)
    if spec is not None:
        _keys(found, "env_spec", spec)
        for w in spec[F.SPEC_ADDITIONAL_WRAPPERS]:
            _keys(found, "wrapper", w)
    for key in (F.META_OBSERVATION_SPACE, F.META_ACTION_SPACE):
        if meta.get(key) is not None:
            _space(found, meta[key])
    if F.META_VECTOR in meta:
        _keys(found, "vector", meta[F.META_VECTOR])
    if meta.get(F.META_FIRST_NONFINITE_UPDATE) is not None:
        _keys(found, "nonfinite", meta[F.META_FIRST_NONFINITE_UPDATE])


def _provenance(found: Found, prov: dict[str, Any]) -> None:
    _keys(found, "provenance", prov)
    for key, what in (
        (F.PROV_VERSIONS, "versions"),
        (F.PROV_DEVICE, "device"),
        (F.PROV_DETERMINISM, "determinism"),
        (F.PROV_PLATFORM, "platform"),
        (F.PROV_GIT, "git"),
    ):
        if key in prov:
            _keys(found, what, prov[key])


def _tree_tags(found: Found, node: Any) -> None:
    """Collect the tag keys of every tree node (the keys of a ``D`` object are data)."""
    if isinstance(node, dict):
        _keys(found, "tree node", node)
        for tag, value in node.items():
            _tree_tags(found, list(value.values()) if tag == "D" else value)
    elif isinstance(node, list):
        for v in node:
            _tree_tags(found, v)


def _tree(found: Found, doc: Any) -> None:
    _tree_tags(found, doc)
    top = doc["D"]
    _keys(found, "tree", top)
    _keys(found, "recorder", top[F.TREE_RECORDER]["D"])
    if top[F.TREE_FALLBACK] is not None:
        _keys(found, "fallback", top[F.TREE_FALLBACK]["D"])


def _load(raw: Any) -> Any:
    return F.loads(raw.decode().rstrip(" ") if isinstance(raw, bytes) else str(raw).rstrip(" "))


def walk(path: Path) -> Found:
    """Every attribute name, and every schema key inside JSON attributes, by schema object."""
    found: Found = {}
    with h5py.File(path, "r") as f:
        found["root attribute"] = set(f.attrs)
        _meta(found, _load(f.attrs[F.META_ATTR]))
        _provenance(found, _load(f.attrs[F.PROVENANCE_ATTR]))

        def visit(name: str, obj: Any) -> None:
            parent = name.rsplit("/", 1)[0] if "/" in name else ""
            if isinstance(obj, h5py.Dataset):
                found.setdefault("dataset attribute", set()).update(obj.attrs)
            elif parent == F.STREAMS_GROUP:
                found.setdefault("stream attribute", set()).update(obj.attrs)
                commit = _load(obj.attrs[F.COMMIT_ATTR])
                _keys(found, "commit", commit)
                for spec in commit[F.COMMIT_COLUMNS].values():
                    _keys(found, "column", spec)
            elif parent == F.SNAPSHOTS_GROUP:
                found.setdefault("snapshot attribute", set()).update(obj.attrs)
                meta = _load(obj.attrs[F.SNAPSHOT_ATTR])
                _keys(found, "snapshot", meta)
                if meta.get(F.SNAP_NONFINITE) is not None:
                    _keys(found, "nonfinite", meta[F.SNAP_NONFINITE])
                checksums = _load(obj.attrs[F.CHECKSUMS_ATTR])
                found.setdefault("checksums", set()).update(
                    k for k in checksums if k.startswith(F.CHECKSUM_META_PREFIX)
                )
                _tree(found, _load(obj.attrs[F.TREE_ATTR]))
            elif isinstance(obj, h5py.Group):
                found.setdefault("group attribute", set()).update(obj.attrs)

        f.visititems(visit)
    return found


def _merge(paths: list[Path]) -> Found:
    out: Found = {}
    for p in paths:
        for what, keys in walk(p).items():
            out.setdefault(what, set()).update(keys)
    return out


def _documented() -> set[str]:
    return set(re.findall(r"`([^`\s]+)`", FORMAT_MD.read_text()))


# Which layout key set closes each schema object (every key emitted must be in it).
SCHEMA: dict[str, frozenset[str]] = {
    "root attribute": frozenset(
        {
            F.FORMAT_ATTR,
            F.VERSION_ATTR,
            F.CREATED_ATTR,
            F.PROVENANCE_ATTR,
            F.META_ATTR,
            F.ROOT_CHECKSUM_ATTR,
        }
    ),
    "stream attribute": frozenset({F.COMMIT_ATTR}),
    "snapshot attribute": frozenset({F.SNAPSHOT_ATTR, F.TREE_ATTR, F.CHECKSUMS_ATTR}),
    "dataset attribute": frozenset({F.LOGICAL_DTYPE_ATTR}),
    "group attribute": frozenset(),
    "meta": F.META_KEYS,
    "env_spec": F.SPEC_KEYS,
    "wrapper": F.WRAPPER_KEYS,
    "space": F.SPACE_KEYS,
    "vector": F.VECTOR_KEYS,
    "nonfinite": F.NONFINITE_KEYS,
    "provenance": F.PROV_KEYS,
    "versions": F.PROV_VERSION_KEYS,
    "device": F.DEVICE_KEYS,
    "determinism": F.DETERMINISM_KEYS,
    "platform": F.PLATFORM_KEYS,
    "git": F.GIT_KEYS,
    "commit": F.COMMIT_KEYS,
    "column": F.COLUMN_KEYS,
    "snapshot": F.SNAP_KEYS,
    "checksums": frozenset({F.LAYOUT_KEY, F.ATTRS_KEY, F.PACK_KEY, F.LOGICAL_KEY}),
    "tree": F.TREE_KEYS,
    "recorder": F.SNAP_KEYS | {F.RECORDER_EPISODES},
    "fallback": F.FALLBACK_KEYS,
    "tree node": frozenset({"D", "M", "L", "T", "A", "S", "t", "dtype", "device", "grad", "F"}),
}


def test_every_emitted_key_is_in_the_layout_schema(recordings: list[Path]) -> None:
    found = _merge(recordings)
    unknown = {what: sorted(keys - SCHEMA[what]) for what, keys in found.items()}
    assert not {k: v for k, v in unknown.items() if v}, (
        "keys written but not spelled in replaykit._format.layout's key sets"
    )


def test_every_emitted_key_is_documented(recordings: list[Path]) -> None:
    documented = _documented()
    found = _merge(recordings)
    missing = {what: sorted(keys - documented) for what, keys in found.items()}
    assert not {k: v for k, v in missing.items() if v}, "keys written but not in docs/FORMAT.md"


def test_the_walk_sees_every_schema_object(recordings: list[Path]) -> None:
    # Guards the walk itself: each recording kind contributes the objects it should.
    found = _merge(recordings)
    # (provenance has no "git" outside a git checkout)
    assert set(SCHEMA) - {"group attribute", "git"} <= set(found)
    assert {
        F.META_VECTOR,
        F.META_KIND,
        F.META_FIRST_NONFINITE_UPDATE,
        F.META_UPDATE_PROBE_ORDER,
        F.META_ENV_ADAPTER,
        F.META_RESETS,
    } <= found["meta"]
    assert {F.SNAP_REPLAY_FROM, F.SNAP_PENDING_AUTORESETS, F.SNAP_NONFINITE} <= found["snapshot"]
    assert F.LOGICAL_DTYPE_ATTR in found["dataset attribute"]
    assert found["fallback"] == F.FALLBACK_KEYS


def test_every_schema_constant_is_documented() -> None:
    documented = _documented()
    constants = {
        name: value
        for name, value in vars(F).items()
        if name.isupper()
        and isinstance(value, str)
        and re.match(
            r"(META|SNAP|COMMIT|COLUMN|SPEC|WRAPPER|SPACE|VECTOR|PROV|DEVICE|PLATFORM|GIT|"
            r"DETERMINISM|TREE|FALLBACK|NONFINITE|RECORDER|ENV_STATE|KIND)_|.*_(ATTR|KEY|TAG)$",
            name,
        )
    }
    assert len(constants) > 80
    members = set().union(*(v for k, v in vars(F).items() if k.endswith("_KEYS")))
    missing = sorted(
        f"{name} = {value!r}" for name, value in constants.items() if value not in documented
    ) + sorted(f"member {v!r} of a *_KEYS set" for v in members - documented)
    assert not missing, "layout constants not named in docs/FORMAT.md"


def test_a_new_key_would_be_caught(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    with RecordingWriter(path, meta={"undocumented_key": 1}, provenance={}) as w:
        w.stream(F.STEPS)
    found = walk(path)
    assert "undocumented_key" in found["meta"] - SCHEMA["meta"]
    assert "undocumented_key" not in _documented()


def test_recording_writer_is_a_sink(tmp_path: Path) -> None:
    w = RecordingWriter(tmp_path / "s.h5", meta={}, provenance={})
    sink: RecordingSink = w
    assert isinstance(sink, RecordingSink)
    sink.update_meta(closed=True)
    assert sink.meta[F.META_CLOSED] is True
    sink.close()


def test_layout_walk_and_library_versions(recordings: list[Path]) -> None:
    versions = library_versions()
    assert versions == {"h5py": h5py.version.version, "hdf5": h5py.version.hdf5_version}
    with Recording(recordings[0]) as rec:
        tree = rec.layout()
        assert set(tree) == {F.STREAMS_GROUP, F.SNAPSHOTS_GROUP}
        steps = tree[F.STREAMS_GROUP][F.STEPS]
        reward = steps[F.REWARD]
        assert isinstance(reward, DatasetInfo) and reward.dtype == "<f8"
        assert reward.shape[0] >= rec.stream(F.STEPS).rows
        for snap in rec.snapshots:
            group = tree[F.SNAPSHOTS_GROUP][snap.name]
            total = sum(d.storage_bytes for d in group.values())
            assert rec.snapshot_storage_bytes(snap.name) == total > 0
