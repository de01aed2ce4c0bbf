"""The replaykit HDF5 layout, version 2: the only module that spells its names.

``docs/FORMAT.md`` is the normative description; this module mirrors it.
Everything else in replaykit reaches into a file through these constants and
helpers, so a layout change is a change here (plus a migration and a version
bump), never a string edit scattered through the code.

Layout::

    /                           attrs: FORMAT_ATTR, VERSION_ATTR, CREATED_ATTR,
                                       PROVENANCE_ATTR (JSON), META_ATTR (JSON)
    /streams/<stream>/          one group per stream: "steps", "resets", "updates", ...
        <column path>           dataset, first axis = row index of the stream
        attrs: COMMIT_ATTR      JSON {"rows": N, "checksums": {column: hex}, "columns": {...}}
    /snapshots/<name>/          one group per committed snapshot
        PACK_DATASET            uint8: the bytes of every array of at most PACK_MAX_BYTES
                                (version 2), at the offsets in CHECKSUMS_ATTR's PACK_KEY
        a0, a1, ...             the snapshot's larger arrays (contiguous datasets; version 1:
                                all of them)
        attrs: SNAPSHOT_ATTR    JSON {"step": ..., "episode": ..., ...}
               TREE_ATTR        JSON encoding of the state tree (see replaykit._format.tree)
               CHECKSUMS_ATTR   JSON {dataset name: hex, LAYOUT_KEY: {...}, PACK_KEY: {...},
                                LOGICAL_KEY: {...}, "@attrs": hex}
    /snapshots/.tmp-<name>      a snapshot being written; readers ignore and writers delete it
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

import numpy as np

FORMAT_NAME: Final = "replaykit.recording"
FORMAT_VERSION: Final = 2
# Oldest version readers accept (version 1 stores every snapshot array as a dataset).
OLDEST_VERSION: Final = 1

# Root attributes.
FORMAT_ATTR: Final = "replaykit_format"
VERSION_ATTR: Final = "replaykit_format_version"
CREATED_ATTR: Final = "created"
PROVENANCE_ATTR: Final = "provenance"
META_ATTR: Final = "meta"
ROOT_CHECKSUM_ATTR: Final = "root_checksum"

# Groups.
STREAMS_GROUP: Final = "streams"
SNAPSHOTS_GROUP: Final = "snapshots"
TMP_PREFIX: Final = ".tmp-"

# Stream names used by the recorder.
STEPS: Final = "steps"
RESETS: Final = "resets"
UPDATES: Final = "updates"

# Stream attributes.
COMMIT_ATTR: Final = "commit"

# Snapshot attributes.
SNAPSHOT_ATTR: Final = "snapshot"
TREE_ATTR: Final = "tree"
CHECKSUMS_ATTR: Final = "checksums"
ARRAY_PREFIX: Final = "a"
# Checksums-attribute entries (keys starting with "@" are not datasets).
LAYOUT_KEY: Final = "@layout"  # {array name: dtype + shape}
ATTRS_KEY: Final = "@attrs"  # digest of the snapshot's attributes
PACK_KEY: Final = "@pack"  # version 2: {array name: byte offset in PACK_DATASET}
LOGICAL_KEY: Final = "@logical"  # version 2: {array index: logical dtype}
# Version 2: small arrays share one dataset, since opening a dataset costs more than
# reading a few kilobytes (a small snapshot holds dozens of arrays).
PACK_DATASET: Final = "pack"
PACK_MAX_BYTES: Final = 64 << 10
PACK_ALIGN: Final = 64

# Column name prefixes inside the steps / resets streams.
OBS: Final = "obs"
ACTION: Final = "action"
REWARD: Final = "reward"
TERMINATED: Final = "terminated"
TRUNCATED: Final = "truncated"
EPISODE: Final = "episode"
INFO: Final = "info"
PROBE: Final = "probe"
PRESENT_SUFFIX: Final = "@present"
# Columns of the resets stream besides obs/info.
RESET_STEP: Final = "step"
RESET_SEED: Final = "seed"
RESET_SEEDED: Final = "seeded"
RESET_OPTIONS: Final = "options"
# Column of the updates stream: the global step count when the update was logged.
UPDATE_STEP: Final = "step"
# Vector recordings (replaykit._session.vector): columns are batched, first axis = sub-env index.
# Steps stream, NEXT_STEP autoreset mode: sub-envs whose step was a reset (action ignored).
AUTORESET: Final = "autoreset"
# Info key (under INFO) of SAME_STEP mode's final observations, stored zero-filled per sub-env.
FINAL_OBS: Final = "final_obs"

# Dataset attribute naming a dtype numpy lacks (the stored integer view holds its bits).
LOGICAL_DTYPE_ATTR: Final = "logical_dtype"
# Logical dtypes stored as same-width unsigned integers.
LOGICAL_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "bfloat16": np.dtype("<u2"),
    "float8_e4m3fn": np.dtype("u1"),
    "float8_e5m2": np.dtype("u1"),
}

# Dtype kinds a file may hold: bool, signed/unsigned int, float, complex.
ALLOWED_KINDS: Final = frozenset("biufc")

# Filters a file may use (HDF5 filter ids): deflate, shuffle, fletcher32, lzf.
ALLOWED_FILTERS: Final = frozenset({1, 2, 3, 32000})

STREAM_CHUNK_ROWS: Final = 4096


def column_path(*parts: str) -> str:
    """Join column path parts with '/' (the separator inside a stream group)."""
    return "/".join(p for p in parts if p)


def stream_path(stream: str) -> str:
    return f"/{STREAMS_GROUP}/{stream}"


def snapshot_path(name: str) -> str:
    return f"/{SNAPSHOTS_GROUP}/{name}"


def is_valid_name(name: str) -> bool:
    """Tell whether ``name`` is a valid snapshot or key name (non-empty, printable, no "/")."""
    return bool(name) and "/" not in name and not name.startswith(".") and name.isprintable()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (np.ndarray,)):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def dumps(obj: Any, *, sort_keys: bool = True) -> str:
    """JSON as stored in attributes: compact, sorted keys, non-finite floats as tagged strings.

    State trees keep their key order (``sort_keys=False``): a dict comes back in the order it
    was captured.
    """
    return json.dumps(
        _finite(obj), sort_keys=sort_keys, separators=(",", ":"), default=_json_default
    )


def loads(text: str | bytes) -> Any:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return json.loads(text, parse_constant=_refuse_constant, object_hook=_unfinite_hook)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"$float": repr(obj)}
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _unfinite_hook(obj: dict[str, Any]) -> Any:
    # Called by the JSON parser for every object, innermost first: no second walk of the tree.
    if len(obj) == 1 and obj.get("$float") in ("nan", "inf", "-inf"):
        return float(obj["$float"])
    return obj
