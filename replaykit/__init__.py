"""replaykit: deterministic reinforcement-learning debugging.

Record a seeded rollout (and training updates) to one HDF5 file with
snapshots of *all* state partway through an episode or epoch; restore a
snapshot in a fresh process and verify the next steps come out bit-exactly
the same; when they do not, say exactly where and why.

Example:
    >>> import gymnasium as gym, replaykit, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "run.h5")
    >>> env = replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, snapshot_at=[10])
    >>> obs, _ = env.reset()
    >>> for _ in range(30):
    ...     obs, r, term, trunc, _ = env.step(env.action_space.sample())
    ...     if term or trunc:
    ...         obs, _ = env.reset()
    >>> env.close()
    >>> rep = replaykit.restore(path, env=gym.make("CartPole-v1"))
    >>> for _ in range(5):
    ...     _ = rep.env.step(rep.recorded_action(rep.step))
    >>> rep.verified_steps
    5
"""

from __future__ import annotations

from typing import Any

import replaykit_envs as _replaykit_envs  # registers the replaykit/... envs with gymnasium

from replaykit._analysis.compare import (
    DiffResult,
    DivergenceReport,
    Rule,
    Rules,
    compare_arrays,
    diff_recordings,
)
from replaykit._format.store import Recording, SnapshotInfo
from replaykit._session.record import RecordingWrapper
from replaykit._session.replay import Replay, VerifyingWrapper, make_env, restore
from replaykit.errors import (
    CaptureError,
    ChecksumError,
    DivergenceError,
    FileFormatError,
    NondeterministicEnvError,
    NotARecordingError,
    ProvenanceError,
    ReplaykitError,
    ReplaykitWarning,
    RestoreError,
    StateMismatchError,
    TruncatedFileError,
    UnsafeFileError,
    UnsupportedVersionError,
    UsageError,
)

__version__ = "0.1.0.dev0"

# torch loads lazily: `replaykit diff/inspect/check` and file reading never need it.
_LAZY = {
    "determinism_flags": "replaykit.determinism",
    "enable_determinism": "replaykit.determinism",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'replaykit' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


del _replaykit_envs

__all__ = [
    "CaptureError",
    "ChecksumError",
    "DiffResult",
    "DivergenceError",
    "DivergenceReport",
    "FileFormatError",
    "NondeterministicEnvError",
    "NotARecordingError",
    "ProvenanceError",
    "Recording",
    "RecordingWrapper",
    "Replay",
    "ReplaykitError",
    "ReplaykitWarning",
    "RestoreError",
    "Rule",
    "Rules",
    "SnapshotInfo",
    "StateMismatchError",
    "TruncatedFileError",
    "UnsafeFileError",
    "UnsupportedVersionError",
    "UsageError",
    "VerifyingWrapper",
    "__version__",
    "compare_arrays",
    "determinism_flags",
    "diff_recordings",
    "enable_determinism",
    "make_env",
    "restore",
]
