"""Forged-but-consistent files: every field rewritten with its checksums recomputed as
docs/FORMAT.md describes. The checksums pass, so only type checks stand between the
forged value and the code that uses it: each must end in one FileFormatError line, never a
raw exception, a RecursionError, or an import (issue 18)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import pytest

from replaykit._analysis.check import validate_file
from replaykit._format import layout as F
from replaykit._format import store as S
from replaykit.errors import FileFormatError

# --------------------------------------------------------------------------- forging


def forge_meta(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the root ``meta`` JSON and recompute ``root_checksum`` (FORMAT.md §3, §8)."""
    with h5py.File(path, "r+") as f:
        meta = json.loads(S._text(f.attrs[F.META_ATTR]))
        change(meta)
        text = S._set_fixed(f.attrs, F.META_ATTR, json.dumps(meta, separators=(",", ":")))
        attrs = {k: f.attrs[k] for k in (F.FORMAT_ATTR, F.CREATED_ATTR, F.PROVENANCE_ATTR)}
        raw = {k: S._text(v) for k, v in attrs.items()}
        raw[F.VERSION_ATTR] = int(f.attrs[F.VERSION_ATTR])
        raw[F.META_ATTR] = text
        S._set_fixed(f.attrs, F.ROOT_CHECKSUM_ATTR, S._root_checksum(raw))


def forge_commit(path: Path, stream: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite a stream's commit record and recompute its ``crc`` (FORMAT.md §4)."""
    with h5py.File(path, "r+") as f:
        g = f[F.stream_path(stream)]
        body = json.loads(S._text(g.attrs[F.COMMIT_ATTR]))
        body.pop(F.COMMIT_CRC)
        change(body)
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        crc = S._digest(text.encode())
        S._set_fixed(g.attrs, F.COMMIT_ATTR, json.dumps({**body, F.COMMIT_CRC: crc}))


def forge_snapshot(
    path: Path, attr: str, change: Callable[[str], str], name: str | None = None
) -> None:
    """Rewrite a snapshot's ``snapshot`` or ``tree`` text and recompute ``@attrs`` (§7)."""
    with h5py.File(path, "r+") as f:
        snaps = f[F.SNAPSHOTS_GROUP]
        g = snaps[name or next(iter(snaps))]
        attrs = {k: S._text(g.attrs[k]) for k in (F.SNAPSHOT_ATTR, F.TREE_ATTR)}
        attrs[attr] = change(attrs[attr])
        for k, v in attrs.items():
            g.attrs[k] = v
        sums = json.loads(S._text(g.attrs[F.CHECKSUMS_ATTR]))
        sums[F.ATTRS_KEY] = S._attrs_digest(
            attrs, sums.get(F.LOGICAL_KEY), sums.get(F.LAYOUT_KEY), sums.get(F.PACK_KEY, {})
        )
        g.attrs[F.CHECKSUMS_ATTR] = json.dumps(sums, separators=(",", ":"))


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


def _deep(n: int) -> Any:
    v: Any = 1
    for _ in range(n):
        v = [v]
    return v


def _spec(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(meta: dict[str, Any]) -> None:
        spec = meta.get(F.META_ENV_SPEC) or {"id": "CartPole-v1"}
        spec[key] = value
        meta[F.META_ENV_SPEC] = spec

    return change


def _column(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        spec = body[F.COMMIT_COLUMNS][F.REWARD]
        spec[field] = value

    return change


def _json_edit(key: str, value: Any) -> Callable[[str], str]:
    def change(text: str) -> str:
        d = json.loads(text)
        d[key] = value
        return json.dumps(d, separators=(",", ":"))

    return change


# (label, forge function, message fragment)
MUTANTS: list[tuple[str, Callable[[Path], None], str]] = [
    ("meta seed string", lambda p: forge_meta(p, _set(F.META_SEED, "abc")), "'seed'"),
    ("meta spec list", lambda p: forge_meta(p, _set(F.META_ENV_SPEC, [1, 2])), "'env_spec'"),
    ("meta env_id int", lambda p: forge_meta(p, _set(F.META_ENV_ID, 5)), "'env_id'"),
    ("meta user list", lambda p: forge_meta(p, _set(F.META_USER, [])), "'user'"),
    ("meta options list", lambda p: forge_meta(p, _set(F.META_RESET_OPTIONS, [1])), "options"),
    ("meta closed str", lambda p: forge_meta(p, _set(F.META_CLOSED, "yes")), "'closed'"),
    ("meta steps float", lambda p: forge_meta(p, _set(F.META_STEPS, 1.5)), "'steps'"),
    ("meta steps negative", lambda p: forge_meta(p, _set(F.META_STEPS, -3)), "'steps'"),
    ("meta probe order", lambda p: forge_meta(p, _set(F.META_UPDATE_PROBE_ORDER, {})), "probe"),
    (
        "spec max steps -5",
        lambda p: forge_meta(p, _spec(F.SPEC_MAX_EPISODE_STEPS, -5)),
        "'env_spec'",
    ),
    ("spec kwargs list", lambda p: forge_meta(p, _spec(F.SPEC_KWARGS, [1])), "'env_spec'"),
    ("spec wrappers", lambda p: forge_meta(p, _spec(F.SPEC_ADDITIONAL_WRAPPERS, {})), "spec"),
    ("meta deep 900", lambda p: forge_meta(p, _set(F.META_USER, {"x": _deep(900)})), "nests"),
    ("meta deep 600", lambda p: forge_meta(p, _set(F.META_USER, {"x": _deep(600)})), "nests"),
    ("commit rows str", lambda p: forge_commit(p, F.STEPS, _set(F.COMMIT_ROWS, "5")), "row"),
    ("commit rows bool", lambda p: forge_commit(p, F.STEPS, _set(F.COMMIT_ROWS, True)), "row"),
    (
        "commit columns list",
        lambda p: forge_commit(p, F.STEPS, _set(F.COMMIT_COLUMNS, [])),
        "objects",
    ),
    (
        "commit checksums",
        lambda p: forge_commit(p, F.STEPS, _set(F.COMMIT_CHECKSUMS, [])),
        "objects",
    ),
    ("column dtype object", lambda p: forge_commit(p, F.STEPS, _column("dtype", "O")), "dtype"),
    (
        "column dtype struct",
        lambda p: forge_commit(p, F.STEPS, _column("dtype", [["a", "<f8"]])),
        "dtype",
    ),
    ("column dtype name", lambda p: forge_commit(p, F.STEPS, _column("dtype", "float")), "dtype"),
    ("column shape str", lambda p: forge_commit(p, F.STEPS, _column("shape", "3")), "shape"),
    ("column shape neg", lambda p: forge_commit(p, F.STEPS, _column("shape", [-1])), "shape"),
    ("column optional", lambda p: forge_commit(p, F.STEPS, _column("optional", 1)), "optional"),
    (
        "snapshot step str",
        lambda p: forge_snapshot(p, F.SNAPSHOT_ATTR, _json_edit(F.SNAP_STEP, "x")),
        "'step'",
    ),
    (
        "snapshot tracked dict",
        lambda p: forge_snapshot(p, F.SNAPSHOT_ATTR, _json_edit(F.SNAP_TRACKED, {})),
        "'tracked'",
    ),
    (
        "tensor dtype _dynamo",
        lambda p: forge_snapshot(
            p, F.TREE_ATTR, lambda t: t.replace('"dtype":"float32"', '"dtype":"_dynamo"', 1)
        ),
        "tensor dtype",
    ),
    (
        "tensor device int",
        lambda p: forge_snapshot(
            p, F.TREE_ATTR, lambda t: t.replace('"device":"cpu"', '"device":5', 1)
        ),
        "device",
    ),
    (
        "tree deep 800",
        lambda p: forge_snapshot(p, F.TREE_ATTR, lambda t: json.dumps(_deep(800))),
        "nests",
    ),
]


@pytest.mark.parametrize("label,forge,match", MUTANTS, ids=[m[0] for m in MUTANTS])
def test_forged_field_is_one_clear_error(
    small_recording: Path, tmp_path: Path, label: str, forge: Callable[[Path], None], match: str
) -> None:
    path = tmp_path / "forged.h5"
    shutil.copy(small_recording, path)
    forge(path)
    with pytest.raises(FileFormatError, match=match) as ei:
        validate_file(path)
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg, msg
    assert type(ei.value.__context__) is not RecursionError


@pytest.mark.integration
def test_forged_tensor_dtype_imports_nothing(small_recording: Path, tmp_path: Path) -> None:
    """A dtype name from a file is looked up in an allow-list, never with getattr on torch."""
    path = tmp_path / "forged.h5"
    shutil.copy(small_recording, path)
    forge_snapshot(
        path, F.TREE_ATTR, lambda t: t.replace('"dtype":"float32"', '"dtype":"_dynamo"', 1)
    )
    code = (
        "import sys, torch\n"
        "from replaykit._format.store import Recording\n"
        "from replaykit.errors import FileFormatError\n"
        f"rec = Recording({str(path)!r})\n"
        "try:\n    rec.load_snapshot()\nexcept FileFormatError as e:\n    print('refused', e)\n"
        "print('dynamo' if 'torch._dynamo' in sys.modules else 'clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "refused" in out.stdout and out.stdout.strip().endswith("clean"), out.stdout + out.stderr


def test_forge_helpers_keep_a_good_file_good(small_recording: Path, tmp_path: Path) -> None:
    """The forging helpers recompute checksums correctly: an identity edit still validates."""
    path = tmp_path / "same.h5"
    shutil.copy(small_recording, path)
    forge_meta(path, lambda m: None)
    forge_commit(path, F.STEPS, lambda b: None)
    forge_snapshot(path, F.SNAPSHOT_ATTR, lambda t: t)
    validate_file(path)


def test_json_depth_is_bounded() -> None:
    ok = json.dumps(_deep(F.MAX_JSON_DEPTH - 1))
    assert F.loads(ok) == _deep(F.MAX_JSON_DEPTH - 1)
    with pytest.raises(F.JSONDepthError):
        F.loads(json.dumps(_deep(F.MAX_JSON_DEPTH + 1)))
    # Brackets inside strings do not count.
    assert F.json_depth(json.dumps({"a": "[[[[{{{{" * 200})) == 1


def test_check_report_escapes_strings_from_the_file(small_recording: Path, tmp_path: Path) -> None:
    """Terminal escapes in a forged env id are printed escaped, never interpreted."""
    path = tmp_path / "escapes.h5"
    shutil.copy(small_recording, path)
    forge_meta(path, _set(F.META_ENV_ID, "CartPole\x1b[2J\x1b]0;owned\x07"))
    text = validate_file(path).format()
    assert "\x1b" not in text and "\x07" not in text
    assert "CartPole\\x1b[2J" in text
