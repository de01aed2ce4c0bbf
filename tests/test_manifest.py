"""The folder manifest: round trip, atomic writes, and every refusal of a bad or hostile one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import xxhash

import replaykit
from replaykit._format import manifest as M
from replaykit.cli import main


def _entry(name: str, seed: int | None = 0, **kw: Any) -> M.ManifestEntry:
    return M.ManifestEntry(file=name, seed=seed, rows={"steps": 10}, snapshots=["s"], **kw)


def _forge(folder: Path, body_edit: Any) -> Path:
    """Write a manifest, edit its body with ``body_edit``, and re-sign it (a valid checksum)."""
    M.write_manifest(M.Manifest(folder=folder, kind=M.KIND_SWEEP, entries=[_entry("a.h5")]))
    path = folder / M.MANIFEST_NAME
    doc = json.loads(path.read_text())
    body_edit(doc["body"])
    doc["checksum"] = xxhash.xxh3_64_hexdigest(M.canonical(doc["body"]))
    path.write_text(json.dumps(doc))
    return path


def test_round_trip_sorted_and_checksummed(tmp_path: Path) -> None:
    entries = [_entry("b.h5", 2), _entry("a.h5", 1, status="failed", error="boom")]
    path = M.write_manifest(
        M.Manifest(folder=tmp_path, kind=M.KIND_SWEEP, entries=entries, info={"env_id": "X"})
    )
    assert path == tmp_path / M.MANIFEST_NAME
    doc = json.loads(path.read_text())
    assert doc["format"] == M.MANIFEST_FORMAT and doc["version"] == M.MANIFEST_VERSION
    assert doc["checksum"] == xxhash.xxh3_64_hexdigest(M.canonical(doc["body"]))
    back = replaykit.read_manifest(tmp_path)
    assert [e.file for e in back.entries] == ["a.h5", "b.h5"]
    assert back.entries[0].error == "boom" and back.entries[0].status == "failed"
    assert back.info == {"env_id": "X"} and back.kind == "sweep"
    assert back.by_seed()[2].file == "b.h5"
    # Only the manifest is left in the folder: the temporary name was renamed away.
    assert sorted(os.listdir(tmp_path)) == [M.MANIFEST_NAME]


def test_a_rewrite_replaces_the_whole_file(tmp_path: Path) -> None:
    m = M.Manifest(folder=tmp_path, kind=M.KIND_SWEEP, entries=[_entry("a.h5")])
    M.write_manifest(m)
    m.entries.append(_entry("b.h5", 1))
    M.write_manifest(m)
    assert [e.file for e in M.read_manifest(tmp_path).entries] == ["a.h5", "b.h5"]


def test_tampered_checksum_is_refused(tmp_path: Path) -> None:
    M.write_manifest(M.Manifest(folder=tmp_path, kind=M.KIND_SWEEP, entries=[_entry("a.h5")]))
    path = tmp_path / M.MANIFEST_NAME
    path.write_text(path.read_text().replace('"seed": 0', '"seed": 5'))
    with pytest.raises(replaykit.ManifestError, match="checksum mismatch"):
        M.read_manifest(path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(version=2), "manifest version 2"),
        (lambda d: d.update(format="other"), "not a replaykit manifest"),
        (lambda d: d.pop("checksum"), "no body or checksum"),
    ],
)
def test_unknown_version_and_shapes_are_refused(tmp_path: Path, edit: Any, match: str) -> None:
    M.write_manifest(M.Manifest(folder=tmp_path, kind=M.KIND_SWEEP, entries=[_entry("a.h5")]))
    path = tmp_path / M.MANIFEST_NAME
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(replaykit.ManifestError, match=match):
        M.read_manifest(path)


def test_not_json_and_oversize_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / M.MANIFEST_NAME
    path.write_bytes(b"\x80\x00not json")
    with pytest.raises(replaykit.ManifestError, match="not JSON"):
        M.read_manifest(path)
    path.write_text("NaN")
    with pytest.raises(replaykit.ManifestError, match="not JSON"):
        M.read_manifest(path)
    M.write_manifest(M.Manifest(folder=tmp_path, kind=M.KIND_SWEEP, entries=[_entry("a.h5")]))
    monkeypatch.setattr(M, "MANIFEST_MAX_BYTES", 100)
    with pytest.raises(replaykit.ManifestError, match="over the 100-byte limit"):
        M.read_manifest(path)


@pytest.mark.parametrize(
    "name", ["../outside.h5", "/etc/passwd", "sub/../../x.h5", "a\\..\\b.h5", "a\x1b[2J.h5", ""]
)
def test_an_entry_naming_a_path_outside_its_folder_is_refused(tmp_path: Path, name: str) -> None:
    path = _forge(tmp_path, lambda b: b["entries"][0].update(file=name))
    with pytest.raises(replaykit.ManifestError, match=r"outside its folder|non-empty string"):
        M.read_manifest(path)
    # ... and writing one is refused too.
    with pytest.raises(replaykit.ManifestError):
        M.write_manifest(M.Manifest(folder=tmp_path, kind=M.KIND_SWEEP, entries=[_entry(name)]))


def test_a_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    secret = tmp_path / "secret.h5"
    secret.write_bytes(b"x")
    (folder / "a.h5").symlink_to(secret)
    with pytest.raises(replaykit.ManifestError, match="outside the folder"):
        M.read_manifest(_forge(folder, lambda b: None))
    # A symlink that stays inside the folder is fine.
    (folder / "a.h5").unlink()
    (folder / "real.h5").write_bytes(b"x")
    (folder / "a.h5").symlink_to(folder / "real.h5")
    assert M.read_manifest(folder).entries[0].file == "a.h5"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda b: b["entries"][0].update(seed="1"), "field 'seed' has type str"),
        (lambda b: b["entries"][0].update(seed=True), "field 'seed' has type bool"),
        (lambda b: b["entries"][0].update(status="great"), "status 'great'"),
        (lambda b: b["entries"][0].update(rows={"steps": -1}), "'rows' must map"),
        (lambda b: b["entries"][0].pop("bytes"), "exactly the keys"),
        (lambda b: b["entries"].append(dict(b["entries"][0])), "repeats file"),
        (lambda b: b.update(kind="code"), "the body must hold"),
    ],
)
def test_every_field_is_type_checked(tmp_path: Path, edit: Any, match: str) -> None:
    with pytest.raises(replaykit.ManifestError, match=match):
        M.read_manifest(_forge(tmp_path, edit))


def test_cli_refuses_a_tampered_manifest_with_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _forge(tmp_path, lambda b: b["entries"][0].update(file="../x.h5"))
    for verb in (["replay"], ["check"]):
        assert main([*verb, str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("replaykit: error: ") and err.count("\n") == 1
        assert "outside its folder" in err
    path.write_text(path.read_text().replace('"kind"', '"kind" '))  # checksum still fine
    doc = json.loads(path.read_text())
    doc["body"]["created"] = "tampered"
    path.write_text(json.dumps(doc))
    assert main(["diff", str(path), str(path)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
