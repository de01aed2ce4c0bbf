"""Training-side sessions: resumable data loaders, counters, envless training recordings.

* :class:`ResumableLoader` wraps a ``torch.utils.data.DataLoader`` so a snapshot taken in the
  middle of an epoch resumes at the next batch the original run saw, without re-reading the
  batches already consumed, with worker processes and worker-side randomness included.
* :class:`Counters` holds a training loop's position (update, epoch, minibatch, phase, ...)
  as tracked state, so one loop function can both record and resume from the middle.
* :class:`TrainingRecorder` / :func:`restore_training` record and verify pure training loops
  (supervised learning) that have no env: updates, snapshots, global RNGs.

Layer localisation (``LayerTracer``, ``first_divergent_module``) lives in
:mod:`replaykit._analysis.layers`.

Example:
    >>> import torch, tempfile, os
    >>> from replaykit._session.training import TrainingRecorder, restore_training
    >>> path = os.path.join(tempfile.mkdtemp(), "train.h5")
    >>> net = torch.nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> def step(log):
    ...     loss = net(torch.ones(1, 2)).pow(2).mean()
    ...     opt.zero_grad(); loss.backward(); opt.step()
    ...     log(loss=loss.detach())
    >>> with TrainingRecorder(path, track={"net": net, "opt": opt}) as rec:
    ...     step(rec.log_update)
    ...     name = rec.snapshot()
    ...     for _ in range(3):
    ...         step(rec.log_update)
    >>> with restore_training(path, name, track={"net": net, "opt": opt}) as rep:
    ...     for _ in range(3):
    ...         step(rep.log_update)
    ...     rep.verified_updates
    3
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from replaykit._analysis.compare import Rule, Rules
from replaykit._format import layout as F
from replaykit._format.store import Recording, SnapshotInfo
from replaykit._session.recorder import RecorderCore
from replaykit._session.verifier import ReplayCore, as_rules, restoring
from replaykit._state import rng, snapshot
from replaykit.errors import StateMismatchError, UsageError

__all__ = [
    "Counters",
    "ResumableLoader",
    "TrainingRecorder",
    "TrainingReplay",
    "params_digest",
    "restore_training",
]

_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------------
# counters


class Counters:
    """Named numbers that mark a training loop's position; capture/restore as tracked state.

    The names are fixed at construction so a restore can check the snapshot fits.

    Example:
        >>> c = Counters(update=0, epoch=0, minibatch=0)
        >>> c.update += 1
        >>> c.__replaykit_state__()
        {'update': 1, 'epoch': 0, 'minibatch': 0}
    """

    def __init__(self, **values: int | float | bool | str) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        values = self.__dict__["_values"]
        if name not in values:
            raise UsageError(
                f"counter {name!r} was not declared; declare it in Counters({name}=...) "
                "so snapshots always carry it"
            )
        values[name] = value

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"Counters({inner})"

    def __replaykit_state__(self) -> dict[str, Any]:
        return dict(self._values)

    def __replaykit_restore__(self, tree: Any) -> None:
        values = self.__dict__["_values"]
        if not isinstance(tree, dict) or set(tree) != set(values):
            saved = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
            raise StateMismatchError(
                "counters", [f"names: snapshot has {saved}, live object has {sorted(values)}"]
            )
        values.update(tree)


def params_digest(module: torch.nn.Module) -> np.uint64:
    """Return the parameters digest of ``module`` as a number, ready for ``log_update``."""
    from replaykit._state.modelstate import parameters_digest

    digest: np.uint64 = np.uint64(int(parameters_digest(module), 16))
    return digest


# --------------------------------------------------------------------------------------------
# resumable data loader


def _mix64(x: int) -> int:
    """splitmix64 finaliser: spreads consecutive integers over 64 bits."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class _TaggedBatch(list[Any]):
    """A batch's index list carrying the seed its worker uses (pickles to worker processes)."""

    seed: int


class _SeededDataset(torch.utils.data.Dataset[Any]):
    """Wraps a map-style dataset: in a worker process, reseeds the RNGs before each batch.

    Worker RNGs otherwise carry state from batch to batch (and workers prefetch ahead of
    the training loop), so skipping consumed batches on resume would shift the random
    augmentation of every later batch. Reseeding per batch from a seed drawn from the
    loader's generator makes each batch a function of (epoch-start state, batch index).
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: list[Any]) -> Any:
        seed = getattr(indices, "seed", None)
        if seed is not None and torch.utils.data.get_worker_info() is not None:
            # Only in workers: in the main process (num_workers=0) data loading draws from the
            # global RNGs in order, which snapshots capture anyway.
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed & 0xFFFFFFFF)
        plain = list(indices)
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems is not None:
            return getitems(plain)
        return [self.dataset[i] for i in plain]


class _EpochBatchSampler:
    """Yields the current epoch's remaining batches (set by :class:`ResumableLoader`)."""

    def __init__(self) -> None:
        self.batches: list[_TaggedBatch] = []
        self.total = 0

    def __iter__(self) -> Iterator[_TaggedBatch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ResumableLoader:
    """A DataLoader wrapper whose position inside an epoch is captured by snapshots.

    At each ``iter()`` it saves the state of the loader's ``generator`` (the epoch-start
    state), draws the epoch's whole index order from the loader's sampler, and counts the
    batches it yields. A snapshot stores the epoch-start generator state and the count. On
    restore, the next ``iter()`` sets the generator back, draws the same order, and drops
    the consumed batches at the *index* level: their data is never loaded again. Batches
    then come out identical, including with worker processes whose ``__getitem__`` uses
    random ops, because each batch's worker RNGs are seeded from (epoch seed, batch index).

    Track the wrapper itself (``track={"loader": loader}``). Write the loop as
    ``while loader.epoch < epochs: for batch in loader: ...``: after a restore in the middle
    of an epoch, ``for batch in loader`` continues that epoch.

    Args:
        loader: a DataLoader over a map-style dataset with automatic batching
            (``batch_size=...`` or ``batch_sampler=...``). With ``shuffle=True`` it must
            have a ``generator=torch.Generator()``: the sampler draws from it, and without
            one it would draw from the global RNG whose epoch-start state is gone by the
            time a mid-epoch snapshot is taken.

    Notes:
        The sampler must draw its randomness from ``loader.generator`` only. With
        ``persistent_workers=True`` the DataLoader's base seed (seen by ``worker_init_fn``)
        is drawn only at the first epoch of a process; dataset randomness is unaffected.
    """

    def __init__(self, loader: torch.utils.data.DataLoader[Any]) -> None:
        from torch.utils.data import DataLoader, IterableDataset, RandomSampler

        if not isinstance(loader, DataLoader):
            raise UsageError(
                f"ResumableLoader wraps a torch DataLoader, got {type(loader).__name__}"
            )
        if isinstance(loader.dataset, IterableDataset):
            raise UsageError(
                "ResumableLoader needs a map-style dataset (indexable); an IterableDataset "
                "cannot skip consumed batches without reading them"
            )
        if loader.batch_sampler is None:
            raise UsageError(
                "ResumableLoader needs automatic batching; pass batch_size=... (not None) or "
                "batch_sampler=... to the DataLoader"
            )
        if not getattr(loader, "in_order", True):
            raise UsageError("ResumableLoader needs in_order=True; batch order must be fixed")
        sampler = getattr(loader.batch_sampler, "sampler", None)
        if isinstance(sampler, RandomSampler) and sampler.generator is None:
            raise UsageError(
                "the DataLoader shuffles with the global torch RNG; pass "
                "generator=torch.Generator().manual_seed(seed) to it so an epoch's order can "
                "be drawn again on resume"
            )
        if loader.generator is not None:
            self.generator: torch.Generator = loader.generator
        else:
            # Epoch seeds need a generator; draw its seed from the (seeded) global RNG.
            self.generator = torch.Generator()
            self.generator.manual_seed(int(torch.randint(0, 2**62, ()).item()))
        self.loader = loader
        self._index_sampler = loader.batch_sampler
        self._sampler = _EpochBatchSampler()
        # A private generator for the DataLoader's own base-seed draw, seeded per epoch, so
        # the user's generator sees the same draws whether or not an iterator is resumed.
        self._worker_gen = torch.Generator()
        kwargs: dict[str, Any] = {}
        if loader.num_workers > 0:
            kwargs["prefetch_factor"] = loader.prefetch_factor
            kwargs["persistent_workers"] = loader.persistent_workers
            kwargs["multiprocessing_context"] = loader.multiprocessing_context
        self._inner = DataLoader(
            _SeededDataset(loader.dataset),
            batch_sampler=self._sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            generator=self._worker_gen,
            **kwargs,
        )
        self.epoch = 0
        self.position = 0
        self._in_epoch = False
        self._epoch_start: Any = None
        self._resume_skip: int | None = None
        self._resume_total: int | None = None

    def __len__(self) -> int:
        return len(self._index_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        skip = 0
        if self._resume_skip is not None:
            skip, self._resume_skip = self._resume_skip, None
        elif self._in_epoch:
            # The previous epoch was abandoned part-way: it still counts as an epoch.
            self.epoch += 1
        self._epoch_start = rng.capture_generator(self.generator)
        batches = [list(b) for b in self._index_sampler]
        if self._resume_total is not None and len(batches) != self._resume_total:
            raise StateMismatchError(
                "data loader",
                [f"batches per epoch: snapshot has {self._resume_total}, live has {len(batches)}"],
            )
        self._resume_total = None
        epoch_seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator))
        self._worker_gen.manual_seed(epoch_seed & 0x7FFFFFFFFFFFFFFF)
        tagged = []
        for i, b in enumerate(batches[skip:], start=skip):
            t = _TaggedBatch(b)
            t.seed = _mix64(epoch_seed ^ _mix64(i)) & 0x7FFFFFFFFFFFFFFF
            tagged.append(t)
        self._sampler.batches = tagged
        self._sampler.total = len(batches)
        self.position = skip
        self._in_epoch = True
        return self._iterate(iter(self._inner))

    def _iterate(self, it: Iterator[Any]) -> Iterator[Any]:
        for batch in it:
            self.position += 1
            yield batch
        self._in_epoch = False
        self.position = 0
        self.epoch += 1

    def __replaykit_state__(self) -> dict[str, Any]:
        return {
            "generator": self._epoch_start
            if self._in_epoch
            else rng.capture_generator(self.generator),
            "in_epoch": self._in_epoch,
            "consumed": self.position if self._in_epoch else 0,
            "epoch": self.epoch,
            "batches": self._sampler.total if self._in_epoch else len(self),
            "dataset_len": len(self.loader.dataset),  # type: ignore[arg-type]
        }

    def __replaykit_restore__(self, tree: Any) -> None:
        keys = {"generator", "in_epoch", "consumed", "epoch", "batches", "dataset_len"}
        if not isinstance(tree, dict) or set(tree) != keys:
            raise StateMismatchError("data loader", [f"expected keys {sorted(keys)}"])
        n = len(self.loader.dataset)  # type: ignore[arg-type]
        if tree["dataset_len"] != n:
            raise StateMismatchError(
                "data loader", [f"dataset length: snapshot has {tree['dataset_len']}, live has {n}"]
            )
        rng.restore_generator(self.generator, tree["generator"])
        self.epoch = int(tree["epoch"])
        self._in_epoch = False
        self.position = 0
        self._resume_skip = int(tree["consumed"]) if tree["in_epoch"] else None
        self._resume_total = int(tree["batches"]) if tree["in_epoch"] else None


# --------------------------------------------------------------------------------------------
# envless training recordings


class TrainingRecorder(RecorderCore):
    """Records a training loop without an env: updates, snapshots of tracked state and RNGs.

    Uses the same ``updates`` stream and snapshot layout as :class:`~replaykit.RecordingWrapper`,
    so ``replaykit diff`` compares two training recordings update by update.

    Args:
        path: the ``.h5`` file to write (replaced if it exists).
        track: ``{name: object}`` to include in snapshots (models, optimizers, schedulers,
            :class:`ResumableLoader`, :class:`Counters`, buffers, ...).
        metadata: JSON-able data stored in the file's metadata under ``"user"``.
        commit_every_seconds: commit (flush to disk) at least this often.
        fsync: also fsync each commit.
        keep_snapshots: flight mode: keep only the first and the last ``keep_snapshots``
            snapshots taken with an automatic name; older ones are dropped once a newer one
            is on disk and their space is reused. Nothing is dropped after a failure.
        detect_failures: write a failure record when an exception escapes the ``with``
            block or the program, or a logged update holds a NaN/infinity. Default: on in
            flight mode. :meth:`mark_failure` works either way.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        track: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        commit_every_seconds: float = 5.0,
        fsync: bool = False,
        keep_snapshots: int | None = None,
        detect_failures: bool | None = None,
    ) -> None:
        self._open(
            path,
            {F.META_KIND: F.KIND_TRAINING, F.META_ENV_ID: None, F.META_ENV_SPEC: None},
            metadata=metadata,
            commit_every_seconds=commit_every_seconds,
            fsync=fsync,
        )
        for name, obj in (track or {}).items():
            self.track(name, obj)
        self._start_flight(keep_snapshots, None, detect_failures)

    def log_update(self, **values: Any) -> int:
        """Record one update's named values; returns the update index."""
        self._require_open()
        return self._update_log.log(0, values)

    def snapshot(self, name: str | None = None, *, extra: Any = None) -> str:
        """Snapshot tracked objects and global RNGs here; returns the snapshot's name."""
        self._require_open()
        auto = name is None
        name = self._snapshot_name(name, "update", self._update_log.count)
        recorder = {
            F.SNAP_STEP: 0,
            F.SNAP_EPISODE: -1,
            F.SNAP_STEP_IN_EPISODE: 0,
            F.SNAP_UPDATES: self._update_log.count,
            F.SNAP_NEEDS_RESET: True,
            F.SNAP_SEQ: self._snap_seq,
        }
        meta = {**recorder, F.SNAP_ENV_STATE: None}
        name = self._write_snapshot(name, meta, env={}, recorder=recorder, extra=extra)
        if auto and self._keep is not None:
            self._periodic.append(name)
            self._retain()
        return name

    def _position(self) -> dict[str, Any]:
        return {
            F.FAILURE_STEP: 0,
            F.FAILURE_EPISODE: -1,
            F.FAILURE_UPDATE: self._update_log.count,
        }

    def _final_meta(self) -> dict[str, Any]:
        return {F.META_STEPS: 0, F.META_EPISODES: 0, F.META_UPDATES: self._update_log.count}


class TrainingReplay(ReplayCore):
    """A restored training snapshot; :meth:`log_update` verifies each update.

    Attributes:
        update: the index of the next update.
        verified_updates: updates verified since the restore.
        extra: the ``extra`` tree given to ``snapshot``.
        snapshot: which snapshot was restored.
    """

    def __init__(
        self,
        rec: Recording,
        snap: SnapshotInfo,
        tree: Any,
        rules: Rules,
        ignore: Iterable[str],
        owns: bool,
    ) -> None:
        position = tree[F.TREE_RECORDER]
        super().__init__(
            rec, snap, position, owns, rules=rules, ignore=ignore, extra=tree.get(F.TREE_EXTRA)
        )


def restore_training(
    recording: Recording | str | os.PathLike[str],
    snapshot_id: str | int | None = None,
    *,
    track: Mapping[str, Any] | None = None,
    rules: Rules | Mapping[str, Rule] | None = None,
    ignore: Iterable[str] = (),
    global_rngs: bool = True,
    verify: bool = True,
) -> TrainingReplay:
    """Restore a training snapshot (from :class:`TrainingRecorder`) into fresh objects.

    Args:
        recording: a path or an open :class:`~replaykit._format.store.Recording`.
        snapshot_id: snapshot name, index, or ``None`` for the first.
        track: ``{name: object}`` built like the recorded tracked objects.
        rules: per-key tolerances (keys ``update/<name>``); bit-exact by default.
        ignore: fnmatch patterns of keys never compared.
        global_rngs: also restore Python/NumPy/torch global RNG states.
        verify: check file checksums.

    Returns:
        A :class:`TrainingReplay`; call its ``log_update`` where the recording did.
    """
    with restoring(recording, verify) as (rec, owns):
        tracked = dict(track or {})
        # Large model tensors are read straight into the tracked modules' memory.
        info, tree = rec.load_snapshot(snapshot_id, targets=snapshot.read_targets(tracked))
        snapshot.check_tracked_names(tree[F.TREE_TRACKED], tree.get(F.TREE_KINDS) or {}, tracked)
        snapshot.restore(tree, tracked, global_rngs=global_rngs)
        return TrainingReplay(rec, info, tree, as_rules(rules), ignore, owns)
