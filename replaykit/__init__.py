"""replaykit: deterministic reinforcement-learning debugging.

Record a seeded rollout (and training updates) to one HDF5 file with
snapshots of *all* state partway through an episode or epoch; restore a
snapshot in a fresh process and verify the next steps come out bit-exactly
the same; when they do not, say exactly where and why.

Every public name is reached from here (``replaykit.RecordingWrapper``,
``replaykit.TrainingRecorder``, ...). Names load on first use, so ``import
replaykit`` imports no torch, no gymnasium env family and no test env.

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
    ...     _ = rep.env.step(rep.recorded_action(rep.step_count))
    >>> rep.verified_steps
    5
"""

from __future__ import annotations

import importlib
import typing

from replaykit.errors import (
    CaptureError,
    ChecksumError,
    DivergenceError,
    FileFormatError,
    ManifestError,
    MissingExtraError,
    NondeterministicEnvError,
    NotARecordingError,
    PrefixEndError,
    ProvenanceError,
    RecordingWriteError,
    ReplaykitError,
    ReplaykitWarning,
    RestoreError,
    StateMismatchError,
    TruncatedFileError,
    UnsafeFileError,
    UnsupportedVersionError,
    UsageError,
)

if typing.TYPE_CHECKING:
    from replaykit._analysis.check import CheckReport, validate_file
    from replaykit._analysis.compare import (
        DiffResult,
        DivergenceReport,
        Rule,
        Rules,
        compare_arrays,
        diff_recordings,
    )
    from replaykit._analysis.doctor import DoctorReport, doctor
    from replaykit._analysis.extract import ExtractResult, extract
    from replaykit._analysis.layers import (
        LayerDivergence,
        LayerTracer,
        first_divergent_module,
        first_update_divergence,
    )
    from replaykit._analysis.report import report
    from replaykit._format.manifest import Manifest, ManifestEntry, read_manifest
    from replaykit._format.store import Recording, SnapshotInfo
    from replaykit._scale.sweep import (
        FileResult,
        FolderResult,
        check_folder,
        diff_folders,
        gather_manifest,
        record_sweep,
        replay_folder,
    )
    from replaykit._session.record import RecordingWrapper
    from replaykit._session.replay import Replay, VerifyingWrapper, make_env, restore
    from replaykit._session.training import (
        Counters,
        ResumableLoader,
        TrainingRecorder,
        TrainingReplay,
        params_digest,
        restore_training,
    )
    from replaykit._session.vector import (
        SubEnv,
        VectorRecordingWrapper,
        VectorReplay,
        capturable,
        restore_vector,
    )
    from replaykit._state.arrays import ArrayState
    from replaykit._state.envs import (
        AttrAdapter,
        EnvAdapter,
        WrapperAdapter,
        register_env_adapter,
        register_stateless_wrapper,
        register_wrapper_adapter,
    )
    from replaykit._state.modelstate import register_state_type
    from replaykit._state.rng import capture_generator, restore_generator
    from replaykit.determinism import determinism_flags, enable_determinism

__version__ = "0.1.0.dev0"

# Public name -> the module that defines it. Loaded on first access (PEP 562), so
# reading, diffing and checking files never pay for torch, and `import replaykit`
# registers nothing with gymnasium.
_LAZY: dict[str, str] = {
    "CheckReport": "replaykit._analysis.check",
    "validate_file": "replaykit._analysis.check",
    "DiffResult": "replaykit._analysis.compare",
    "DivergenceReport": "replaykit._analysis.compare",
    "Rule": "replaykit._analysis.compare",
    "Rules": "replaykit._analysis.compare",
    "compare_arrays": "replaykit._analysis.compare",
    "diff_recordings": "replaykit._analysis.compare",
    "DoctorReport": "replaykit._analysis.doctor",
    "doctor": "replaykit._analysis.doctor",
    "ExtractResult": "replaykit._analysis.extract",
    "extract": "replaykit._analysis.extract",
    "report": "replaykit._analysis.report",
    "LayerDivergence": "replaykit._analysis.layers",
    "LayerTracer": "replaykit._analysis.layers",
    "first_divergent_module": "replaykit._analysis.layers",
    "first_update_divergence": "replaykit._analysis.layers",
    "Manifest": "replaykit._format.manifest",
    "ManifestEntry": "replaykit._format.manifest",
    "read_manifest": "replaykit._format.manifest",
    "Recording": "replaykit._format.store",
    "SnapshotInfo": "replaykit._format.store",
    "FileResult": "replaykit._scale.sweep",
    "FolderResult": "replaykit._scale.sweep",
    "check_folder": "replaykit._scale.sweep",
    "diff_folders": "replaykit._scale.sweep",
    "gather_manifest": "replaykit._scale.sweep",
    "record_sweep": "replaykit._scale.sweep",
    "replay_folder": "replaykit._scale.sweep",
    "RecordingWrapper": "replaykit._session.record",
    "Replay": "replaykit._session.replay",
    "VerifyingWrapper": "replaykit._session.replay",
    "make_env": "replaykit._session.replay",
    "restore": "replaykit._session.replay",
    "Counters": "replaykit._session.training",
    "ResumableLoader": "replaykit._session.training",
    "TrainingRecorder": "replaykit._session.training",
    "TrainingReplay": "replaykit._session.training",
    "params_digest": "replaykit._session.training",
    "restore_training": "replaykit._session.training",
    "SubEnv": "replaykit._session.vector",
    "VectorRecordingWrapper": "replaykit._session.vector",
    "VectorReplay": "replaykit._session.vector",
    "capturable": "replaykit._session.vector",
    "restore_vector": "replaykit._session.vector",
    "ArrayState": "replaykit._state.arrays",
    "AttrAdapter": "replaykit._state.envs",
    "EnvAdapter": "replaykit._state.envs",
    "WrapperAdapter": "replaykit._state.envs",
    "register_env_adapter": "replaykit._state.envs",
    "register_stateless_wrapper": "replaykit._state.envs",
    "register_wrapper_adapter": "replaykit._state.envs",
    "register_state_type": "replaykit._state.modelstate",
    "capture_generator": "replaykit._state.rng",
    "restore_generator": "replaykit._state.rng",
    "determinism_flags": "replaykit.determinism",
    "enable_determinism": "replaykit.determinism",
}


def __getattr__(name: str) -> typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'replaykit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ArrayState",
    "AttrAdapter",
    "CaptureError",
    "CheckReport",
    "ChecksumError",
    "Counters",
    "DiffResult",
    "DivergenceError",
    "DivergenceReport",
    "DoctorReport",
    "EnvAdapter",
    "ExtractResult",
    "FileFormatError",
    "FileResult",
    "FolderResult",
    "LayerDivergence",
    "LayerTracer",
    "Manifest",
    "ManifestEntry",
    "ManifestError",
    "MissingExtraError",
    "NondeterministicEnvError",
    "NotARecordingError",
    "PrefixEndError",
    "ProvenanceError",
    "Recording",
    "RecordingWrapper",
    "RecordingWriteError",
    "Replay",
    "ReplaykitError",
    "ReplaykitWarning",
    "RestoreError",
    "ResumableLoader",
    "Rule",
    "Rules",
    "SnapshotInfo",
    "StateMismatchError",
    "SubEnv",
    "TrainingRecorder",
    "TrainingReplay",
    "TruncatedFileError",
    "UnsafeFileError",
    "UnsupportedVersionError",
    "UsageError",
    "VectorRecordingWrapper",
    "VectorReplay",
    "VerifyingWrapper",
    "WrapperAdapter",
    "__version__",
    "capturable",
    "capture_generator",
    "check_folder",
    "compare_arrays",
    "determinism_flags",
    "diff_folders",
    "diff_recordings",
    "doctor",
    "enable_determinism",
    "extract",
    "first_divergent_module",
    "first_update_divergence",
    "gather_manifest",
    "make_env",
    "params_digest",
    "read_manifest",
    "record_sweep",
    "register_env_adapter",
    "register_state_type",
    "register_stateless_wrapper",
    "register_wrapper_adapter",
    "replay_folder",
    "report",
    "restore",
    "restore_generator",
    "restore_training",
    "restore_vector",
    "validate_file",
]
