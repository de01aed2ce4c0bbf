"""Layer localisation: which module's output or gradient first differs between two runs.

:class:`LayerTracer` records a digest of each module's output and output gradient during one
update; :func:`first_divergent_module` names the first module where two runs differ, and
:func:`first_update_divergence` the first differing update of a diff.

Importing this module does not import torch (only tracing does), so
:func:`~replaykit._analysis.compare.diff_recordings` can name the first divergent module of
any two recordings without paying for torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from replaykit._analysis.compare import DiffResult, KeyDivergence
from replaykit._format import layout as F

if TYPE_CHECKING:
    import torch

__all__ = [
    "LAYER_KEY_PREFIX",
    "LAYER_PROBE_PREFIX",
    "LayerDivergence",
    "LayerTracer",
    "first_divergent_module",
    "first_update_divergence",
    "locate_first_module",
]

# Probe names a LayerTracer logs start with this; as keys of a diff (in the updates stream)
# they start with LAYER_KEY_PREFIX.
LAYER_PROBE_PREFIX = "layer/"
LAYER_KEY_PREFIX = f"{F.UPDATES}/{F.column_path(F.PROBE, LAYER_PROBE_PREFIX)}"
# A layer probe column read for one row: shape (1, 2) = [[execution index, digest]].
_ROW_NDIM = 2


def _tensors(x: Any) -> list[torch.Tensor]:
    import torch

    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, Mapping):
        return [t for v in x.values() for t in _tensors(v)]
    return []


def _digest(tensors: list[torch.Tensor]) -> int:
    import xxhash

    from replaykit._state.modelstate import raw_bytes

    h = xxhash.xxh3_64()
    for t in tensors:
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(raw_bytes(t))
    return h.intdigest()


class LayerTracer:
    """Digests every module's forward output and output gradient during one training update.

    Use it around the forward and backward passes of the update to localise, then log
    :meth:`probes` with the update. Each probe is named ``layer/<module path>/out`` or
    ``layer/<module path>/grad`` (``grad.<i>`` for the i-th tensor of a multi-tensor
    output, ``#<n>`` appended for a module's n-th call) and holds a ``uint64[2]`` array
    ``[execution index, xxh3 digest]``: the execution order is recorded with the values,
    so :func:`first_divergent_module` can name the earliest module whose output or gradient
    differs between two runs.

    Args:
        modules: ``{name: module}``; submodule paths are prefixed with the name.
        enabled: install nothing (and log nothing) when ``False``, so a loop can always
            write ``with LayerTracer(..., enabled=u == localize_update) as tr``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh())
        >>> with LayerTracer({"net": net}) as tr:
        ...     net(torch.ones(1, 2, requires_grad=True)).sum().backward()
        >>> list(tr.probes())[:2]
        ['layer/net.0/out', 'layer/net.1/out']
    """

    def __init__(self, modules: Mapping[str, torch.nn.Module], *, enabled: bool = True) -> None:
        self.modules = dict(modules)
        self.enabled = enabled
        self._events: dict[str, np.ndarray] = {}
        self._calls: dict[str, int] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> LayerTracer:
        if self.enabled:
            for root, module in self.modules.items():
                for path, sub in module.named_modules():
                    full = f"{root}.{path}" if path else root
                    self._handles.append(sub.register_forward_hook(self._forward_hook(full)))
        return self

    def __exit__(self, *exc: object) -> None:
        # Tensor hooks registered on outputs stay until backward; forward hooks go now.
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _record(self, key: str, tensors: list[torch.Tensor]) -> None:
        self._events[key] = np.array([len(self._events), _digest(tensors)], dtype=np.uint64)

    def _forward_hook(self, path: str) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            n = self._calls[path] = self._calls.get(path, 0) + 1
            suffix = "" if n == 1 else f"#{n}"
            tensors = _tensors(output)
            if not tensors:
                return
            self._record(f"{LAYER_PROBE_PREFIX}{path}/out{suffix}", tensors)
            grads = [t for t in tensors if t.requires_grad]
            for i, t in enumerate(grads):
                name = "grad" if len(grads) == 1 else f"grad.{i}"
                key = f"{LAYER_PROBE_PREFIX}{path}/{name}{suffix}"
                t.register_hook(self._grad_hook(key))  # type: ignore[no-untyped-call]

        return hook

    def _grad_hook(self, key: str) -> Any:
        def hook(grad: torch.Tensor) -> None:
            if key not in self._events:  # a tensor reached twice: keep the first
                self._record(key, [grad])

        return hook

    def probes(self) -> dict[str, np.ndarray]:
        """Return the recorded ``{probe name: [index, digest]}`` in execution order."""
        return dict(self._events)

    @property
    def order(self) -> list[str]:
        """Probe names in the order the modules ran (forward, then backward)."""
        return list(self._events)


@dataclass
class LayerDivergence:
    """The first module (in execution order) whose output or gradient differs between runs.

    Attributes:
        module: the module's path (``net.1``, ``critic.q2``).
        kind: ``out`` or ``grad`` (``grad.<i>``, ``#<n>`` for a module's n-th call).
        update: the update row the digests were logged at.
        key: the diff key (``updates/probe/layer/<module>/<kind>``).
        index: the event's position in execution order (forward outputs, then gradients).
    """

    module: str
    kind: str
    update: int
    key: str
    index: int

    def describe(self) -> str:
        """Return one sentence naming the module (:func:`render.layer_divergence`).

        Example:
            >>> LayerDivergence("net.0", "grad", 2, "k", 5).describe()[:52]
            'update 2: the gradient (w.r.t. its output) of module'
        """
        from replaykit._analysis import render

        return render.layer_divergence(self)


def first_update_divergence(result: DiffResult) -> KeyDivergence | None:
    """Return the first divergence in the ``updates`` stream (earliest update, then logging order).

    :attr:`DiffResult.first` orders steps before updates; for a training run the update
    that diverged first is usually the question. Within one update, probes are ordered as
    the loop logged them (the recording's ``update_probe_order`` metadata, read once by
    :func:`~replaykit._analysis.compare.diff_recordings`).

    Example:
        >>> # first = first_update_divergence(diff_recordings("a.h5", "b.h5"))
        >>> # first.row, first.key  ->  (1, 'updates/probe/q2_loss')
    """
    ups = [d for d in result.divergences if d.stream == F.UPDATES]
    if not ups:
        return None
    return min(
        ups, key=lambda d: (d.row if d.row is not None else -1, result.probe_rank(d.key), d.key)
    )


def locate_first_module(divergences: list[KeyDivergence], updates: Any) -> LayerDivergence | None:
    """Name the first module that differs among ``divergences``, reading the reference file.

    Called by :func:`~replaykit._analysis.compare.diff_recordings` while the reference
    recording is open; each layer probe holds ``[execution index, digest]``, so the earliest
    index among the layer keys that differ at the first differing update wins.

    Args:
        divergences: a diff's divergences (only layer probes of ``updates`` are looked at).
        updates: the reference recording's ``updates`` stream reader.

    Returns:
        A :class:`LayerDivergence`, or ``None`` when no layer probe differs.
    """
    layer = [
        d
        for d in divergences
        if d.stream == F.UPDATES and d.key.startswith(LAYER_KEY_PREFIX) and d.row is not None
    ]
    if not layer:
        return None
    row = min(d.row for d in layer if d.row is not None)
    at_row = [d for d in layer if d.row == row]
    seq: dict[str, int] = {}
    if row < updates.rows:
        for d in at_row:
            col = d.key[len(F.UPDATES) + 1 :]
            if col not in updates:
                continue
            present = updates.present(col, row, row + 1)
            value = updates.read(col, row, row + 1)
            is_event = value.ndim == _ROW_NDIM and value.shape[1] >= 1
            if (present is None or bool(present[0])) and is_event:
                seq[d.key] = int(value[0][0])
    first = min(at_row, key=lambda d: (seq.get(d.key, 1 << 62), d.key))
    module, _, kind = first.key[len(LAYER_KEY_PREFIX) :].rpartition("/")
    return LayerDivergence(
        module=module, kind=kind, update=row, key=first.key, index=seq.get(first.key, -1)
    )


def first_divergent_module(
    result: DiffResult | tuple[str | os.PathLike[str], str | os.PathLike[str]],
) -> LayerDivergence | None:
    """Name the first module whose output or gradient differs, in execution order.

    Args:
        result: a :class:`~replaykit._analysis.compare.DiffResult` of two recordings made with a
            :class:`LayerTracer` at the same update, or the two recordings' paths.

    Returns:
        A :class:`LayerDivergence`, or ``None`` when no layer probe differs.

    Example:
        >>> # found = first_divergent_module(("a.h5", "b.h5"))
        >>> # found.module, found.kind, found.update  ->  ('m.q2', 'grad', 1)
    """
    if isinstance(result, DiffResult):
        return result.first_module
    from replaykit._analysis.compare import diff_recordings

    a, b = result
    return diff_recordings(a, b, keys=[LAYER_KEY_PREFIX + "*"]).first_module
