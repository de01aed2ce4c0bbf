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
                                LOGICAL_KEY: {...}, ATTRS_KEY: hex}
    /snapshots/.tmp-<name>      a snapshot being written; readers ignore and writers delete it
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

import numpy as np

FORMAT_NAME: Final = "replaykit.recording"
# Newest version readers accept and writers may write. A writer stamps BASE_VERSION and
# moves a file to SPILL_VERSION only when a record outgrows SPILL_MAX_BYTES (below), so
# files that do not need version 3 stay readable by version 2 readers.
FORMAT_VERSION: Final = 4
BASE_VERSION: Final = 2
# Version 2: small snapshot arrays packed, names inside checksummed records.
PACK_VERSION: Final = 2
SPILL_VERSION: Final = 3
# Version 4: a stream's rows may start at a global row index other than 0 (COMMIT_FIRST),
# as in the small recordings ``replaykit extract`` cuts; stamped only on such files.
FIRST_ROW_VERSION: Final = 4
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

# Version 3: a JSON attribute that can grow without bound (the root META_ATTR, a stream's
# COMMIT_ATTR: reset options each episode, a commit record of 1,000 info columns) holds at
# most SPILL_MAX_BYTES. A longer text is written into one of two uint8 datasets beside it
# (SPILL_SLOTS, used in turn: the one the attribute does not point to is rewritten, so a
# kill leaves the old text whole), and the attribute holds {SPILL_TAG: slot name,
# SPILL_BYTES: length, SPILL_DIGEST: xxh3-64 hex of the text}. Object-header attributes
# cannot exceed 64 KiB, and large ones are written outside the commit's flushes.
SPILL_TAG: Final = "$spill"
SPILL_BYTES: Final = "bytes"
SPILL_DIGEST: Final = "digest"
SPILL_KEYS: Final = frozenset({SPILL_TAG, SPILL_BYTES, SPILL_DIGEST})
SPILL_MAX_BYTES: Final = 16 << 10


def spill_slots(attr: str) -> tuple[str, str]:
    """Return the names of the two datasets that hold attribute ``attr``'s long text."""
    return f".{attr}-0", f".{attr}-1"


# Snapshot attributes.
SNAPSHOT_ATTR: Final = "snapshot"
TREE_ATTR: Final = "tree"
CHECKSUMS_ATTR: Final = "checksums"
ARRAY_PREFIX: Final = "a"
# Checksums-attribute entries (keys starting with CHECKSUM_META_PREFIX are not datasets).
CHECKSUM_META_PREFIX: Final = "@"
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

# ---------------------------------------------------------------------------------------------
# Keys inside JSON attributes: the closed attribute schema (docs/FORMAT.md §3, §4, §6, §7).
# Every key a writer puts inside a JSON attribute is spelled here, once; each ``*_KEYS``
# frozenset lists one object's keys so tests and readers can check a record is closed.
# Values under META_USER, the env spec's kwargs and reset options are user data, not schema.

# Tags inside any JSON attribute (not trees, which use their own tags, replaykit._format.tree).
FLOAT_TAG: Final = "$float"  # {"$float": "nan" | "inf" | "-inf"}: a non-finite Python float
REPR_TAG: Final = "$repr"  # {"$repr": text}: a value that is not data, kept as its repr

# Stream commit record (COMMIT_ATTR).
COMMIT_ROWS: Final = "rows"
COMMIT_COLUMNS: Final = "columns"  # {column path: {COLUMN_DTYPE, COLUMN_SHAPE, COLUMN_OPTIONAL}}
COMMIT_CHECKSUMS: Final = "checksums"  # {column path: hex}
COMMIT_STREAM: Final = "stream"  # version 2: the stream's own name
COMMIT_CRC: Final = "crc"  # digest of the canonical JSON of the record without it
# Version 4, optional: the global index of the stream's first stored row (absent: 0).
COMMIT_FIRST: Final = "first"
COMMIT_KEYS: Final = frozenset(
    {COMMIT_ROWS, COMMIT_COLUMNS, COMMIT_CHECKSUMS, COMMIT_STREAM, COMMIT_CRC, COMMIT_FIRST}
)
COLUMN_DTYPE: Final = "dtype"  # NumPy dtype string, or a LOGICAL_DTYPES name
COLUMN_SHAPE: Final = "shape"  # shape of one row's value
COLUMN_OPTIONAL: Final = "optional"  # whether the column has a PRESENT_SUFFIX companion
COLUMN_KEYS: Final = frozenset({COLUMN_DTYPE, COLUMN_SHAPE, COLUMN_OPTIONAL})

# Snapshot metadata (SNAPSHOT_ATTR). The recorder's position (the first six) is also the
# state tree's TREE_RECORDER object.
SNAP_STEP: Final = "step"  # transitions recorded before the snapshot
SNAP_EPISODE: Final = "episode"  # index of the current episode (-1: training recording)
SNAP_STEP_IN_EPISODE: Final = "step_in_episode"
SNAP_UPDATES: Final = "updates"  # updates logged before the snapshot
SNAP_NEEDS_RESET: Final = "needs_reset"
SNAP_SEQ: Final = "seq"  # snapshot counter, orders snapshots taken at the same step
SNAP_ENV_STATE: Final = "env_state"  # ENV_STATE_ADAPTER, ENV_STATE_REPLAY_FROM_RESET or null
SNAP_REPLAY_FROM: Final = "replay_from"  # without adapter: "episode-start" | "recording-start"
SNAP_TRACKED: Final = "tracked"  # sorted tracked names
SNAP_NONFINITE: Final = "nonfinite"  # null or {NONFINITE_PATH, NONFINITE_INDEX, NONFINITE_VALUE}
SNAP_BYTES: Final = "bytes"  # bytes of array data
SNAP_NAME: Final = "name"  # version 2: the snapshot's own name
# Vector recordings only.
SNAP_RESETS: Final = "resets"  # vector reset calls before the snapshot
SNAP_LAST_WAS_RESET: Final = "last_was_reset"
SNAP_PENDING_AUTORESETS: Final = "pending_autoresets"  # sub-envs whose next step resets
SNAP_KEYS: Final = frozenset(
    {
        SNAP_STEP,
        SNAP_EPISODE,
        SNAP_STEP_IN_EPISODE,
        SNAP_UPDATES,
        SNAP_NEEDS_RESET,
        SNAP_SEQ,
        SNAP_ENV_STATE,
        SNAP_REPLAY_FROM,
        SNAP_TRACKED,
        SNAP_NONFINITE,
        SNAP_BYTES,
        SNAP_NAME,
        SNAP_RESETS,
        SNAP_LAST_WAS_RESET,
        SNAP_PENDING_AUTORESETS,
    }
)
# Values of SNAP_ENV_STATE.
ENV_STATE_ADAPTER: Final = "adapter"
ENV_STATE_REPLAY_FROM_RESET: Final = "replay-from-reset"

# First non-finite value found (SNAP_NONFINITE, META_FIRST_NONFINITE_UPDATE).
NONFINITE_PATH: Final = "path"  # path of the tracked value (snapshots)
NONFINITE_PROBE: Final = "probe"  # name of the update probe (updates)
NONFINITE_UPDATE: Final = "update"  # update index (updates)
NONFINITE_STEP: Final = "step"  # global step when the update was logged (updates)
NONFINITE_INDEX: Final = "index"  # element index, a list of ints
NONFINITE_VALUE: Final = "value"  # repr of the value
NONFINITE_KEYS: Final = frozenset(
    {
        NONFINITE_PATH,
        NONFINITE_PROBE,
        NONFINITE_UPDATE,
        NONFINITE_STEP,
        NONFINITE_INDEX,
        NONFINITE_VALUE,
    }
)

# Root metadata (META_ATTR).
META_CREATED: Final = "created"  # optional: overrides CREATED_ATTR (reproducible files)
META_KIND: Final = "kind"  # "training" (TrainingRecorder), "sb3" (ReplaykitCallback); else absent
META_ENV_ID: Final = "env_id"
META_ENV_SPEC: Final = "env_spec"  # {SPEC_*} or null
META_ENV_CLASS: Final = "env_class"
META_ENV_ADAPTER: Final = "env_adapter"  # adapter name, or null
META_SEED: Final = "seed"
META_OBSERVATION_SPACE: Final = "observation_space"  # {SPACE_*}
META_ACTION_SPACE: Final = "action_space"  # {SPACE_*}
META_VECTOR: Final = "vector"  # vector recordings: {VECTOR_*}
META_USER: Final = "user"  # the user's metadata= (user data)
META_SKIPPED_INFO: Final = "skipped_info"  # info keys not recorded (non-numeric)
META_RESET_OPTIONS: Final = "reset_options"  # {episode or reset index: options}
META_CLOSED: Final = "closed"  # true once the recorder closed cleanly
META_STEPS: Final = "steps"
META_EPISODES: Final = "episodes"
META_RESETS: Final = "resets"  # vector recordings: reset calls
META_UPDATES: Final = "updates"
META_UPDATE_PROBE_ORDER: Final = "update_probe_order"  # probe names in first-logged order
META_FIRST_NONFINITE_UPDATE: Final = "first_nonfinite_update"  # {NONFINITE_*}
META_FAILURE: Final = "failure"  # the run's failure record: {FAILURE_*}, or absent
META_RETENTION: Final = "retention"  # flight mode: {RETENTION_*}, or absent
META_EXTRACT: Final = "extract"  # files cut by replaykit extract: {EXTRACT_*}, or absent
META_KEYS: Final = frozenset(
    {
        META_CREATED,
        META_KIND,
        META_ENV_ID,
        META_ENV_SPEC,
        META_ENV_CLASS,
        META_ENV_ADAPTER,
        META_SEED,
        META_OBSERVATION_SPACE,
        META_ACTION_SPACE,
        META_VECTOR,
        META_USER,
        META_SKIPPED_INFO,
        META_RESET_OPTIONS,
        META_CLOSED,
        META_STEPS,
        META_EPISODES,
        META_RESETS,
        META_UPDATES,
        META_UPDATE_PROBE_ORDER,
        META_FIRST_NONFINITE_UPDATE,
        META_FAILURE,
        META_RETENTION,
        META_EXTRACT,
    }
)

# The failure record (META_FAILURE): what went wrong first, and where. Text is data: an
# exception's message and traceback are stored as text and shown escaped, never evaluated.
FAILURE_KIND: Final = "kind"  # FAILURE_EXCEPTION, FAILURE_NONFINITE or FAILURE_MARKED
FAILURE_STEP: Final = "step"  # transitions recorded before the failure (its steps row)
FAILURE_EPISODE: Final = "episode"  # episode index at the failure (-1: training recording)
FAILURE_UPDATE: Final = "update"  # updates logged before the failure
FAILURE_WHERE: Final = "where"  # nonfinite: "obs", "reward", "probe", "update" or "reset-obs"
FAILURE_KEY: Final = "key"  # nonfinite: the column (or update value) holding it
FAILURE_INDEX: Final = "index"  # nonfinite: element index, a list of ints
FAILURE_VALUE: Final = "value"  # nonfinite: repr of the value
FAILURE_REASON: Final = "reason"  # one line: the user's reason, or "<type>: <message>"
FAILURE_EXC_TYPE: Final = "exc_type"  # exception: qualified type name
FAILURE_MESSAGE: Final = "message"  # exception: str(exc), at most FAILURE_TEXT_MAX chars
FAILURE_TRACEBACK: Final = "traceback"  # exception: formatted traceback text (capped)
FAILURE_SNAPSHOT: Final = "snapshot"  # newest snapshot taken at or before FAILURE_STEP, or null
FAILURE_KEYS: Final = frozenset(
    {
        FAILURE_KIND,
        FAILURE_STEP,
        FAILURE_EPISODE,
        FAILURE_UPDATE,
        FAILURE_WHERE,
        FAILURE_KEY,
        FAILURE_INDEX,
        FAILURE_VALUE,
        FAILURE_REASON,
        FAILURE_EXC_TYPE,
        FAILURE_MESSAGE,
        FAILURE_TRACEBACK,
        FAILURE_SNAPSHOT,
    }
)
FAILURE_EXCEPTION: Final = "exception"
FAILURE_NONFINITE: Final = "nonfinite"
FAILURE_MARKED: Final = "marked"
FAILURE_TEXT_MAX: Final = 4000

# Flight mode (META_RETENTION): periodic snapshots of which the first and the last
# RETENTION_KEEP stay; older ones are unlinked, and their space reused by the next one.
RETENTION_EVERY: Final = "every"  # snapshot every this many steps (updates: training)
RETENTION_KEEP: Final = "keep"  # periodic snapshots kept besides the first
RETENTION_DROPPED: Final = "dropped"  # snapshots deleted so far
RETENTION_KEYS: Final = frozenset({RETENTION_EVERY, RETENTION_KEEP, RETENTION_DROPPED})

# An extract (META_EXTRACT): a small recording cut from a larger one.
EXTRACT_SOURCE: Final = "source"  # the source file's name (not a path)
EXTRACT_SOURCE_CHECKSUM: Final = "source_checksum"  # the source's root checksum
EXTRACT_SNAPSHOT: Final = "snapshot"  # the snapshot it starts from
EXTRACT_FIRST: Final = "first"  # {stream: first global row kept}
EXTRACT_KEYS: Final = frozenset(
    {EXTRACT_SOURCE, EXTRACT_SOURCE_CHECKSUM, EXTRACT_SNAPSHOT, EXTRACT_FIRST}
)
# Value of META_KIND.
KIND_TRAINING: Final = "training"
KIND_SB3: Final = "sb3"  # replaykit.integrations.sb3.ReplaykitCallback files

# META_ENV_SPEC: the gymnasium EnvSpec as data.
SPEC_ID: Final = "id"
SPEC_ENTRY_POINT: Final = "entry_point"
SPEC_KWARGS: Final = "kwargs"  # user data
SPEC_MAX_EPISODE_STEPS: Final = "max_episode_steps"
SPEC_REWARD_THRESHOLD: Final = "reward_threshold"
SPEC_NONDETERMINISTIC: Final = "nondeterministic"
SPEC_ORDER_ENFORCE: Final = "order_enforce"
SPEC_DISABLE_ENV_CHECKER: Final = "disable_env_checker"
SPEC_ADDITIONAL_WRAPPERS: Final = "additional_wrappers"  # [{WRAPPER_*}]
SPEC_KEYS: Final = frozenset(
    {
        SPEC_ID,
        SPEC_ENTRY_POINT,
        SPEC_KWARGS,
        SPEC_MAX_EPISODE_STEPS,
        SPEC_REWARD_THRESHOLD,
        SPEC_NONDETERMINISTIC,
        SPEC_ORDER_ENFORCE,
        SPEC_DISABLE_ENV_CHECKER,
        SPEC_ADDITIONAL_WRAPPERS,
    }
)
WRAPPER_NAME: Final = "name"
WRAPPER_ENTRY_POINT: Final = "entry_point"
WRAPPER_KWARGS: Final = "kwargs"  # user data
WRAPPER_KEYS: Final = frozenset({WRAPPER_NAME, WRAPPER_ENTRY_POINT, WRAPPER_KWARGS})

# META_OBSERVATION_SPACE / META_ACTION_SPACE: a space as data.
SPACE_TYPE: Final = "type"  # gymnasium class name
SPACE_SPACES: Final = "spaces"  # Dict: {key: space}; Tuple: [space]
SPACE_SHAPE: Final = "shape"
SPACE_DTYPE: Final = "dtype"
SPACE_N: Final = "n"  # Discrete
SPACE_START: Final = "start"  # Discrete
SPACE_KEYS: Final = frozenset(
    {SPACE_TYPE, SPACE_SPACES, SPACE_SHAPE, SPACE_DTYPE, SPACE_N, SPACE_START}
)

# META_VECTOR.
VECTOR_KIND: Final = "kind"  # "sync" | "async"
VECTOR_NUM_ENVS: Final = "num_envs"
VECTOR_AUTORESET_MODE: Final = "autoreset_mode"  # gymnasium AutoresetMode value
VECTOR_KEYS: Final = frozenset({VECTOR_KIND, VECTOR_NUM_ENVS, VECTOR_AUTORESET_MODE})

# Provenance (PROVENANCE_ATTR), written by replaykit.provenance.
PROV_VERSIONS: Final = "versions"  # {package: version or null}, PROV_VERSION_KEYS
PROV_DEVICE: Final = "device"  # {DEVICE_*}
PROV_DETERMINISM: Final = "determinism"  # {DETERMINISM_*}
PROV_PLATFORM: Final = "platform"  # {PLATFORM_*}
PROV_GIT: Final = "git"  # {GIT_*}, only inside a git checkout
PROV_ARGV: Final = "argv"
PROV_CREATED: Final = "created"
PROV_PID: Final = "pid"
PROV_KEYS: Final = frozenset(
    {
        PROV_VERSIONS,
        PROV_DEVICE,
        PROV_DETERMINISM,
        PROV_PLATFORM,
        PROV_GIT,
        PROV_ARGV,
        PROV_CREATED,
        PROV_PID,
    }
)
# Keys of PROV_VERSIONS: distribution names, plus the Python and HDF5 library versions.
PROV_VERSION_KEYS: Final = frozenset(
    {
        "replaykit",
        "numpy",
        "torch",
        "gymnasium",
        "h5py",
        "mujoco",
        "ale-py",
        "box2d",
        "python",
        "hdf5",
        # RL libraries, present only when the recording process had imported them.
        "stable-baselines3",
        "sb3-contrib",
        "cleanrl",
        "torchrl",
        "tianshou",
        "envpool",
        "pettingzoo",
    }
)
DEVICE_CUDA: Final = "cuda"
DEVICE_CUDNN: Final = "cudnn"
DEVICE_NAMES: Final = "names"
DEVICE_KEYS: Final = frozenset({DEVICE_CUDA, DEVICE_CUDNN, DEVICE_NAMES})
PLATFORM_SYSTEM: Final = "system"
PLATFORM_MACHINE: Final = "machine"
PLATFORM_PROCESSOR: Final = "processor"
PLATFORM_KEYS: Final = frozenset({PLATFORM_SYSTEM, PLATFORM_MACHINE, PLATFORM_PROCESSOR})
GIT_REVISION: Final = "revision"
GIT_DIRTY: Final = "dirty"
GIT_KEYS: Final = frozenset({GIT_REVISION, GIT_DIRTY})
# PROV_DETERMINISM, written by replaykit.determinism.determinism_flags.
DETERMINISM_ALGORITHMS: Final = "deterministic_algorithms"
DETERMINISM_ALGORITHMS_WARN_ONLY: Final = "deterministic_algorithms_warn_only"
DETERMINISM_CUDNN: Final = "cudnn_deterministic"
DETERMINISM_CUDNN_BENCHMARK: Final = "cudnn_benchmark"
DETERMINISM_CUBLAS_WORKSPACE: Final = "cublas_workspace_config"
DETERMINISM_THREADS: Final = "num_threads"
DETERMINISM_INTEROP_THREADS: Final = "num_interop_threads"
DETERMINISM_MATMUL_TF32: Final = "cuda_matmul_allow_tf32"
DETERMINISM_CUDNN_TF32: Final = "cudnn_allow_tf32"
DETERMINISM_MATMUL_PRECISION: Final = "float32_matmul_precision"
DETERMINISM_KEYS: Final = frozenset(
    {
        DETERMINISM_ALGORITHMS,
        DETERMINISM_ALGORITHMS_WARN_ONLY,
        DETERMINISM_CUDNN,
        DETERMINISM_CUDNN_BENCHMARK,
        DETERMINISM_CUBLAS_WORKSPACE,
        DETERMINISM_THREADS,
        DETERMINISM_INTEROP_THREADS,
        DETERMINISM_MATMUL_TF32,
        DETERMINISM_CUDNN_TF32,
        DETERMINISM_MATMUL_PRECISION,
    }
)

# Top-level keys of a snapshot's state tree (TREE_ATTR), written by replaykit._state.snapshot
# and the vector and training recorders.
TREE_ENV: Final = "env"  # env chain; {} for training recordings; {vector, envs} for vector ones
TREE_RNGS: Final = "rngs"  # global RNGs: python, numpy, torch
TREE_TRACKED: Final = "tracked"  # {name: captured state}
TREE_KINDS: Final = "kinds"  # {name: kind of the tracked object}
TREE_RECORDER: Final = "recorder"  # the recorder's position (SNAP_* keys)
TREE_FALLBACK: Final = "fallback"  # replay-from-reset data: {FALLBACK_*}, or null
TREE_EXTRA: Final = "extra"  # the user's extra= (user data)
TREE_KEYS: Final = frozenset(
    {TREE_ENV, TREE_RNGS, TREE_TRACKED, TREE_KINDS, TREE_RECORDER, TREE_FALLBACK, TREE_EXTRA}
)
FALLBACK_EPISODE_START: Final = "episode_start"
FALLBACK_SCOPE: Final = "scope"  # "episode" | "recording"
FALLBACK_RECORDING_START: Final = "recording_start"
FALLBACK_KEYS: Final = frozenset({FALLBACK_EPISODE_START, FALLBACK_SCOPE, FALLBACK_RECORDING_START})
# Vector recordings' recorder position also holds the per-sub-env episode indexes.
RECORDER_EPISODES: Final = "episodes"

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


# JSON read from a file nests at most this deep: a state tree of MAX_TREE_DEPTH levels takes
# two JSON levels per tree level, and nothing else replaykit writes comes near. Deeper text
# is refused before parsing, so no reader meets a RecursionError.
MAX_JSON_DEPTH: Final = 512
# JSON text read from a file is at most this long: parsing takes several times its size in
# memory, and a variable-length attribute's stored size is not known before it is read.
MAX_JSON_BYTES: Final = 64 << 20
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET_STEP = np.zeros(256, np.int8)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1


class JSONDepthError(ValueError):
    """JSON text nests deeper than :data:`MAX_JSON_DEPTH` or exceeds :data:`MAX_JSON_BYTES`."""


def json_depth(text: str) -> int:
    """Return how deep ``text``'s arrays and objects nest (brackets inside strings ignored)."""
    if text.count("[") + text.count("{") <= 1:
        return text.count("[") + text.count("{")
    raw = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8"), np.uint8)
    return int(np.cumsum(_BRACKET_STEP[raw], dtype=np.int32).max(initial=0))


def loads(text: str | bytes) -> Any:
    """Parse JSON as stored in attributes; ValueError (never RecursionError) when malformed.

    Raises:
        JSONDepthError: the text nests deeper than :data:`MAX_JSON_DEPTH` or is longer
            than :data:`MAX_JSON_BYTES`.
        ValueError: anything else that is not JSON as replaykit writes it.
    """
    if len(text) > MAX_JSON_BYTES:
        raise JSONDepthError(
            f"JSON attribute of {len(text)} bytes exceeds the {MAX_JSON_BYTES} any replaykit "
            "attribute has (a forged file?)"
        )
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        depth = json_depth(text)
        if depth > MAX_JSON_DEPTH:
            raise JSONDepthError(
                f"JSON nests {depth} levels deep, over the {MAX_JSON_DEPTH} any replaykit "
                "attribute has (a forged file?)"
            )
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_hook=_unfinite_hook)
    except RecursionError:
        raise JSONDepthError("JSON nests too deeply to parse (a forged file?)") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return {FLOAT_TAG: repr(obj)}
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _unfinite_hook(obj: dict[str, Any]) -> Any:
    # Called by the JSON parser for every object, innermost first: no second walk of the tree.
    if len(obj) == 1 and obj.get(FLOAT_TAG) in ("nan", "inf", "-inf"):
        return float(obj[FLOAT_TAG])
    return obj
