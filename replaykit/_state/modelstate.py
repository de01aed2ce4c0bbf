"""Capture and restore of training objects (models, optimizers, schedulers, ...) as state trees.

:func:`capture_object` turns a live object into a state tree that shares no memory with it;
:func:`restore_object` writes such a tree back into a live object *in place*, after checking
that it fits. Supported out of the box:

* ``torch.nn.Module``: parameters and persistent buffers (``state_dict``) plus the train/eval
  flag of every submodule (dropout and batch norm behave differently in each mode).
* ``torch.optim.Optimizer`` (any subclass), ``torch.optim.lr_scheduler.LRScheduler`` (including
  ``ReduceLROnPlateau``, ``SequentialLR`` and ``ChainedScheduler``) and ``torch.amp.GradScaler``.
* ``numpy.ndarray`` and ``torch.Tensor`` (restored in place), and ``dict`` / ``list`` / ``tuple``
  containers of supported objects (restored element by element).
* Any object with ``__replaykit_state__()`` and ``__replaykit_restore__(tree)`` (a protocol for
  things like replay buffers); this wins over every other rule.
* Any other object with ``state_dict()`` and ``load_state_dict()`` methods.

Anything else is refused with :class:`~replaykit.errors.CaptureError`; teach replaykit a new type
with :func:`register_state_type`. Dispatch is by type (``functools.singledispatch``).

Restores refuse rather than convert: ``Module.load_state_dict`` and
``Optimizer.load_state_dict`` silently cast floating-point tensors to the live dtype, which would
make a "bit-exact" restore quietly inexact, so shapes and dtypes are compared first and every
difference is reported in one :class:`~replaykit.errors.StateMismatchError`.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(2, 2)
    >>> tree = capture_object(net)
    >>> with torch.no_grad():
    ...     _ = net.weight.zero_()
    >>> restore_object(net, tree)
    >>> bool(net.weight.abs().sum() > 0)
    True
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np
import torch
import xxhash

from replaykit.errors import CaptureError, RestoreError, StateMismatchError

__all__ = [
    "capture_object",
    "first_nonfinite",
    "module_read_targets",
    "parameters_digest",
    "raw_bytes",
    "register_state_type",
    "restore_object",
    "tensor_digest",
]

# Optimizers whose per-parameter state tensors legitimately differ in shape from the parameter
# (LBFGS keeps flattened history, Adafactor keeps factored row/column statistics). For these
# only dtypes are checked when the live optimizer has no state yet to compare against.
_IRREGULAR_STATE_OPTIMIZERS = frozenset({"LBFGS", "Adafactor"})

_HOW_TO_FIX = (
    "implement state_dict()/load_state_dict() or __replaykit_state__()/__replaykit_restore__(tree) "
    "on it, or register it with replaykit.register_state_type(cls, capture, restore)"
)


# --------------------------------------------------------------------------------------------
# helpers


def _type_name(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor {str(x.dtype).removeprefix('torch.')} {tuple(x.shape)}"
    if isinstance(x, np.ndarray):
        return f"ndarray {x.dtype} {tuple(x.shape)}"
    return type(x).__name__


_SHARING: contextvars.ContextVar[bool] = contextvars.ContextVar("replaykit_sharing", default=False)


@contextlib.contextmanager
def sharing() -> Iterator[None]:
    """Let captures and restores inside share memory with live objects instead of copying.

    For a capture that is written to disk before anything can change (a snapshot), and for
    a restore from a tree that nothing else holds (one just read from a file): it saves a
    full copy of every tensor, which for large models is most of the time.
    """
    token = _SHARING.set(True)
    try:
        yield
    finally:
        _SHARING.reset(token)


def _clone_tree(x: Any, path: str = "") -> Any:
    """Copy a state tree so it shares no memory with live objects, refusing non-tree leaves."""
    if isinstance(x, torch.Tensor):
        # detach: the snapshot must not keep an autograd graph (or its memory) alive.
        return x.detach() if _SHARING.get() else x.detach().clone()
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise CaptureError(
                f"cannot capture {path or 'value'}: object-dtype arrays hold Python objects that "
                "cannot be stored exactly; use a numeric dtype"
            )
        return x if _SHARING.get() else x.copy()
    if x is None or isinstance(x, (bool, int, float, str, np.generic)):
        if isinstance(x, np.generic) and x.dtype == object:
            raise CaptureError(f"cannot capture {path or 'value'}: numpy object scalar")
        return x
    if isinstance(x, dict):
        out: dict[Any, Any] = {}
        for k, v in x.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise CaptureError(
                    f"cannot capture {path or 'value'}: dict key {k!r} of type "
                    f"{type(k).__name__}; state trees allow only str and int keys"
                )
            out[k] = _clone_tree(v, f"{path}/{k}")
        return out
    if isinstance(x, list):
        return [_clone_tree(v, f"{path}/{i}") for i, v in enumerate(x)]
    if isinstance(x, tuple):
        # Tuple subclasses (torch.Size, named tuples) become plain tuples: the codec stores tuples.
        return tuple(_clone_tree(v, f"{path}/{i}") for i, v in enumerate(x))
    raise CaptureError(
        f"cannot capture {path or 'value'}: a {_type_name(x)} is not a state-tree value "
        "(arrays, tensors, numbers, strings, None, dicts, lists, tuples); " + _HOW_TO_FIX
    )


def _compare_tree(path: str, saved: Any, live: Any, out: list[str]) -> None:
    """Append one line per structural difference (keys, lengths, tensor shapes/dtypes)."""
    if isinstance(live, dict):
        if not isinstance(saved, dict):
            out.append(f"{path or '/'}: recorded a {type(saved).__name__}, got a dict")
            return
        missing = [k for k in live if k not in saved]
        extra = [k for k in saved if k not in live]
        out.extend(f"{path}/{k}: missing in snapshot" for k in missing)
        out.extend(f"{path}/{k}: in snapshot but not in the live object" for k in extra)
        for k in live:
            if k in saved:
                _compare_tree(f"{path}/{k}", saved[k], live[k], out)
    elif isinstance(live, (list, tuple)):
        if not isinstance(saved, (list, tuple)):
            out.append(f"{path or '/'}: recorded a {type(saved).__name__}, got a sequence")
        elif len(saved) != len(live):
            out.append(f"{path or '/'}: recorded {len(saved)} entries, got {len(live)}")
        else:
            for i, (s, lv) in enumerate(zip(saved, live, strict=True)):
                _compare_tree(f"{path}/{i}", s, lv, out)
    elif isinstance(live, (torch.Tensor, np.ndarray)) and (
        (
            type(saved) is not type(live)
            and not (isinstance(saved, torch.Tensor) and isinstance(live, torch.Tensor))
        )
        or (saved.dtype != live.dtype or tuple(saved.shape) != tuple(live.shape))
    ):
        out.append(f"{path or '/'}: recorded {_describe(saved)}, got {_describe(live)}")


def _unwrap(what: str, tree: Any, kind: str, live: Any) -> Any:
    """Check a wrapped capture's kind and class; return its ``state_dict`` payload."""
    if not isinstance(tree, dict) or "kind" not in tree or "state_dict" not in tree:
        raise StateMismatchError(
            what, [f"recorded a {type(tree).__name__}, got a {kind} (a captured {kind} expected)"]
        )
    problems = []
    if tree["kind"] != kind:
        problems.append(f"kind: recorded {tree['kind']!r}, got {kind!r}")
    if tree.get("class") != _type_name(live):
        problems.append(f"class: recorded {tree.get('class')}, got {_type_name(live)}")
    if problems:
        raise StateMismatchError(what, problems)
    return tree["state_dict"]


def _wrap(kind: str, obj: Any, state_dict: Any) -> dict[str, Any]:
    return {"kind": kind, "class": _type_name(obj), "state_dict": _clone_tree(state_dict)}


# --------------------------------------------------------------------------------------------
# dispatch


@functools.singledispatch
def _capture(obj: Any) -> Any:
    state_dict = getattr(obj, "state_dict", None)
    load = getattr(obj, "load_state_dict", None)
    if callable(state_dict) and callable(load):
        return _wrap("state_dict", obj, state_dict())
    raise CaptureError(f"cannot capture state of {_type_name(obj)}: " + _HOW_TO_FIX)


@functools.singledispatch
def _restore(obj: Any, tree: Any) -> None:
    load = getattr(obj, "load_state_dict", None)
    if callable(getattr(obj, "state_dict", None)) and callable(load):
        what = f"state of {type(obj).__name__}"
        saved = _unwrap(what, tree, "state_dict", obj)
        live = obj.state_dict()
        if isinstance(saved, dict) and isinstance(live, dict):
            # Only top-level keys: generic state dicts may legitimately vary in size below that.
            problems: list[str] = []
            problems += [f"/{k}: missing in snapshot" for k in live if k not in saved]
            problems += [
                f"/{k}: in snapshot but not in the live object" for k in saved if k not in live
            ]
            if problems:
                raise StateMismatchError(what, problems)
        load(_clone_tree(saved))
        return
    name = type(obj).__name__
    raise CaptureError(
        f"cannot restore state into {_type_name(obj)}: no state type is registered for it in "
        f"this process; register it before restoring, as the recording process did: "
        f"replaykit.register_state_type({name}, capture, restore) (or implement "
        "state_dict()/load_state_dict() or __replaykit_state__()/__replaykit_restore__(tree) on it)"
    )


def capture_object(obj: Any) -> Any:
    """Capture the state of a training object as a state tree.

    Args:
        obj: a module, optimizer, scheduler, grad scaler, array, tensor, container of those, an
            object implementing ``__replaykit_state__``, or any object with ``state_dict()``.

    Returns:
        A state tree sharing no memory with ``obj``; restore it with :func:`restore_object`.

    Raises:
        CaptureError: the object (or a value inside its state) cannot be captured exactly.
    """
    hook = getattr(obj, "__replaykit_state__", None)
    if callable(hook) and not isinstance(obj, type):
        return _clone_tree(hook(), type(obj).__name__)
    return _capture(obj)


def restore_object(obj: Any, tree: Any) -> None:
    """Restore a state tree made by :func:`capture_object` into a live object, in place.

    The live object keeps its identity and its tensors keep their devices; only values change.

    Args:
        obj: the live object to overwrite; built the same way as the captured one.
        tree: the saved state tree (tensors may be on CPU whatever device they came from).

    Raises:
        StateMismatchError: the saved state does not fit ``obj`` (keys, shapes, dtypes, param
            groups, class); the message lists every difference found.
        CaptureError: replaykit does not know how to restore this type.
    """
    hook = getattr(obj, "__replaykit_restore__", None)
    if callable(hook) and not isinstance(obj, type):
        hook(tree)
        return
    _restore(obj, tree)


def register_state_type(
    cls: type,
    capture: Callable[[Any], Any],
    restore: Callable[[Any, Any], None],
) -> None:
    """Teach :func:`capture_object` / :func:`restore_object` a new type (and its subclasses).

    Args:
        cls: the type to handle.
        capture: ``capture(obj) -> state tree``; the tree must not share memory with ``obj``.
        restore: ``restore(obj, tree) -> None``; should raise ``StateMismatchError`` when the
            tree does not fit.

    Example:
        >>> class Counter:
        ...     def __init__(self):
        ...         self.n = 0
        >>> def restore_counter(c, tree):
        ...     c.n = tree["n"]
        >>> register_state_type(Counter, lambda c: {"n": c.n}, restore_counter)
        >>> capture_object(Counter())
        {'n': 0}
    """
    if not isinstance(cls, type):
        raise CaptureError(f"register_state_type needs a class, got {type(cls).__name__}")
    _capture.register(cls, capture)
    _restore.register(cls, restore)


# --------------------------------------------------------------------------------------------
# arrays, tensors, containers


@_capture.register
def _(obj: np.ndarray) -> np.ndarray:
    return cast(np.ndarray, _clone_tree(obj, "ndarray"))


@_restore.register
def _(obj: np.ndarray, tree: Any) -> None:
    if not isinstance(tree, np.ndarray) or tree.dtype != obj.dtype or tree.shape != obj.shape:
        raise StateMismatchError("array", [f"recorded {_describe(tree)}, got {_describe(obj)}"])
    if not obj.flags.writeable:
        raise RestoreError(
            f"cannot restore into a read-only {_describe(obj)}; pass a writeable array"
        )
    obj[...] = tree


@_capture.register
def _(obj: torch.Tensor) -> torch.Tensor:
    return obj.detach().clone()


@_restore.register
def _(obj: torch.Tensor, tree: Any) -> None:
    if (
        not isinstance(tree, torch.Tensor)
        or tree.dtype != obj.dtype
        or tuple(tree.shape) != tuple(obj.shape)
    ):
        raise StateMismatchError("tensor", [f"recorded {_describe(tree)}, got {_describe(obj)}"])
    with torch.no_grad():
        obj.copy_(tree)


@_capture.register(dict)
def _(obj: dict[Any, Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for k, v in obj.items():
        if isinstance(k, bool) or not isinstance(k, (str, int)):
            raise CaptureError(
                f"cannot capture dict key {k!r} of type {type(k).__name__}; state trees allow "
                "only str and int keys"
            )
        out[k] = capture_object(v)
    return out


@_restore.register(dict)
def _(obj: dict[Any, Any], tree: Any) -> None:
    if not isinstance(tree, dict):
        raise StateMismatchError("dict", [f"recorded a {type(tree).__name__}, got a dict"])
    problems = [f"key {k!r}: missing in snapshot" for k in obj if k not in tree]
    problems += [f"key {k!r}: in snapshot but not in the live dict" for k in tree if k not in obj]
    # Check arrays up front so the common dict-of-arrays case is restored all or nothing.
    for k, v in obj.items():
        if k in tree and isinstance(v, np.ndarray):
            s = tree[k]
            if not isinstance(s, np.ndarray) or s.dtype != v.dtype or s.shape != v.shape:
                problems.append(f"{k}: recorded {_describe(s)}, got {_describe(v)}")
    if problems:
        raise StateMismatchError("dict", problems)
    for k, v in obj.items():
        restore_object(v, tree[k])


@_capture.register(list)
@_capture.register(tuple)
def _(obj: list[Any] | tuple[Any, ...]) -> list[Any]:
    return [capture_object(v) for v in obj]


@_restore.register(list)
@_restore.register(tuple)
def _(obj: list[Any] | tuple[Any, ...], tree: Any) -> None:
    if not isinstance(tree, (list, tuple)) or len(tree) != len(obj):
        found = f"{len(tree)} entries" if isinstance(tree, (list, tuple)) else type(tree).__name__
        raise StateMismatchError("sequence", [f"recorded {found}, got {len(obj)} entries"])
    for v, s in zip(obj, tree, strict=True):
        restore_object(v, s)


# --------------------------------------------------------------------------------------------
# torch.nn.Module


@_capture.register
def _(obj: torch.nn.Module) -> dict[str, Any]:
    names = []
    flags = []
    for name, sub in obj.named_modules():
        names.append(name)
        flags.append(bool(sub.training))
    return {
        "kind": "module",
        "class": _type_name(obj),
        "state_dict": _clone_tree(obj.state_dict(keep_vars=False), "state_dict"),
        "training": {"names": names, "flags": flags},
    }


@_restore.register
def _(obj: torch.nn.Module, tree: Any) -> None:
    what = f"model {type(obj).__name__}"
    if not isinstance(tree, dict) or tree.get("kind") != "module":
        found = tree.get("kind") if isinstance(tree, dict) else type(tree).__name__
        raise StateMismatchError(what, [f"recorded {found!r}, got a module"])
    saved = tree["state_dict"]
    live = obj.state_dict(keep_vars=False)
    problems: list[str] = []
    for k, v in live.items():
        if k not in saved:
            problems.append(f"{k}: not in the snapshot (got {_describe(v)})")
    for k, v in saved.items():
        if k not in live:
            problems.append(f"{k}: recorded {_describe(v)}, not in the live model")
    for k, v in live.items():
        if k not in saved or not isinstance(v, torch.Tensor):
            continue
        s = saved[k]
        if not isinstance(s, torch.Tensor):
            problems.append(f"{k}: recorded {_describe(s)}, got {_describe(v)}")
            continue
        if tuple(s.shape) != tuple(v.shape):
            problems.append(f"{k}: recorded shape {tuple(s.shape)}, got {tuple(v.shape)}")
        if s.dtype != v.dtype:
            # load_state_dict would silently cast; a cast is not a bit-exact restore.
            problems.append(f"{k}: recorded dtype {s.dtype}, got {v.dtype}")
    modules = list(obj.named_modules())
    training = tree.get("training")
    live_names = [n for n, _ in modules]
    if training is not None and list(training["names"]) != live_names:
        problems.append(
            f"submodules: recorded {len(training['names'])} named "
            f"{list(training['names'])[:4]}..., got {len(live_names)} named {live_names[:4]}..."
        )
    if problems:
        raise StateMismatchError(what, problems)
    # A saved tensor that already is the live one's memory (read straight into it, see
    # module_read_targets) is handed over as the live tensor itself: copy_ onto itself is free.
    kept = obj.state_dict(keep_vars=True)
    saved = {k: _same_memory(v, kept.get(k)) for k, v in saved.items()}
    # Copies into the live tensors (no_grad copy_), so parameters keep their device and identity
    # and optimizers holding them stay valid.
    obj.load_state_dict(saved, strict=True)
    if training is not None:
        for (_, sub), flag in zip(modules, training["flags"], strict=True):
            # Set the attribute directly: the train/eval mode methods recurse and override children.
            sub.training = bool(flag)


def _same_memory(saved: Any, live: Any) -> Any:
    """Return ``live`` where tensor ``saved`` views exactly its memory, else ``saved``."""
    if (
        isinstance(saved, torch.Tensor)
        and isinstance(live, torch.Tensor)
        and saved.device == live.device
        and saved.dtype == live.dtype
        and saved.shape == live.shape
        and saved.stride() == live.stride()
        and saved.numel() > 0
        and saved.data_ptr() == live.data_ptr()
    ):
        return live
    return saved


# Tensor dtypes whose CPU memory numpy can view as the array a snapshot stores.
_VIEWABLE = frozenset(
    {
        torch.float16,
        torch.float32,
        torch.float64,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
        torch.complex64,
        torch.complex128,
    }
)


def module_read_targets(obj: Any) -> dict[str, np.ndarray] | None:
    """Numpy views of a module's CPU tensors, by state-dict key, to read a snapshot into.

    ``None`` for anything but a plain ``torch.nn.Module`` (one that does not define its own
    ``__replaykit_state__``). Only contiguous, ordinary tensors are offered; the restore
    that follows still checks every key, shape and dtype.

    Example:
        >>> sorted(module_read_targets(torch.nn.Linear(2, 1)))
        ['bias', 'weight']
    """
    if not isinstance(obj, torch.nn.Module) or callable(getattr(obj, "__replaykit_state__", None)):
        return None
    out: dict[str, np.ndarray] = {}
    for k, v in obj.state_dict(keep_vars=True).items():
        if (
            isinstance(v, torch.Tensor)
            and v.device.type == "cpu"
            and v.dtype in _VIEWABLE
            and v.is_contiguous()
            and not (v.is_conj() or v.is_neg() or v.is_sparse or v.is_quantized)
            and type(v) in (torch.Tensor, torch.nn.Parameter)
        ):
            out[k] = v.detach().numpy()
    return out


# --------------------------------------------------------------------------------------------
# torch.optim.Optimizer


@_capture.register
def _(obj: torch.optim.Optimizer) -> dict[str, Any]:
    return _wrap("optimizer", obj, obj.state_dict())


# One check per rule an optimizer state must meet, in the order a reader would check them;
# split up, the rules would no longer read as one list.
def _optimizer_problems(obj: torch.optim.Optimizer, saved: Any) -> list[str]:  # noqa: C901, PLR0912
    if not isinstance(saved, dict) or "state" not in saved or "param_groups" not in saved:
        return ["expected a dict with 'state' and 'param_groups'"]
    problems: list[str] = []
    live_groups = obj.param_groups
    saved_groups = saved["param_groups"]
    if len(saved_groups) != len(live_groups):
        problems.append(
            f"param groups: recorded {len(saved_groups)}, got {len(live_groups)}; create the "
            "optimizer with the same parameter groups as when recorded"
        )
    id_to_param: dict[Any, torch.Tensor] = {}
    for gi, (sg, lg) in enumerate(zip(saved_groups, live_groups, strict=False)):
        n_live, n_saved = len(lg["params"]), len(sg["params"])
        if n_live != n_saved:
            problems.append(f"param group {gi}: recorded {n_saved} params, got {n_live}")
        live_keys = set(lg) - {"params"}
        saved_keys = set(sg) - {"params"}
        for k in sorted(live_keys - saved_keys):
            problems.append(f"param group {gi}: option {k!r} missing in snapshot")
        for k in sorted(saved_keys - live_keys):
            problems.append(f"param group {gi}: option {k!r} not used by {type(obj).__name__}")
        for pid, p in zip(sg["params"], lg["params"], strict=False):
            id_to_param[pid] = p
    irregular = type(obj).__name__ in _IRREGULAR_STATE_OPTIMIZERS
    for pid, pstate in saved["state"].items():
        p = id_to_param.get(pid)
        if p is None:
            problems.append(f"state for param id {pid!r}: no such param in the param groups")
            continue
        if not isinstance(pstate, dict):
            problems.append(f"state.{pid}: recorded a {type(pstate).__name__}, got a dict")
            continue
        live_state = obj.state.get(p)
        if live_state:
            # The live optimizer has stepped: its state is the exact template.
            for k in live_state:
                if k not in pstate:
                    problems.append(f"state.{pid}: key {k!r} missing in snapshot")
            for k in pstate:
                if k not in live_state:
                    problems.append(f"state.{pid}: key {k!r} not used by {type(obj).__name__}")
            for k, lv in live_state.items():
                sv = pstate.get(k)
                if (
                    isinstance(lv, torch.Tensor)
                    and k in pstate
                    and (
                        not isinstance(sv, torch.Tensor)
                        or sv.dtype != lv.dtype
                        or tuple(sv.shape) != tuple(lv.shape)
                    )
                ):
                    problems.append(
                        f"state.{pid}.{k}: recorded {_describe(sv)}, got {_describe(lv)}"
                    )
            continue
        # Fresh optimizer: per-element state has the param's shape and (floating) dtype.
        for k, sv in pstate.items():
            if not isinstance(sv, torch.Tensor) or k == "step" or sv.dim() == 0:
                continue
            if not irregular and tuple(sv.shape) != tuple(p.shape):
                problems.append(
                    f"state.{pid}.{k}: recorded shape {tuple(sv.shape)}, "
                    f"got {tuple(p.shape)} (the param's)"
                )
            if p.is_floating_point() and sv.is_floating_point() and sv.dtype != p.dtype:
                # Optimizer.load_state_dict would silently cast it to the param's dtype.
                problems.append(
                    f"state.{pid}.{k}: recorded dtype {sv.dtype}, got {p.dtype} (the param's)"
                )
    return problems


@_restore.register
def _(obj: torch.optim.Optimizer, tree: Any) -> None:
    what = f"optimizer {type(obj).__name__}"
    if isinstance(tree, dict) and tree.get("kind") == "optimizer":
        problems = []
        if tree.get("class") != _type_name(obj):
            problems.append(f"class: recorded {tree.get('class')}, got {_type_name(obj)}")
        problems += _optimizer_problems(obj, tree.get("state_dict"))
        if problems:
            raise StateMismatchError(what, problems)
    saved = _unwrap(what, tree, "optimizer", obj)
    # Clone: Optimizer.load_state_dict keeps tensors that already have the right dtype/device
    # (and 'step' always, unless capturable/fused) by reference, and the next step() updates
    # them in place, which would silently rewrite the caller's snapshot.
    obj.load_state_dict(_clone_tree(saved))


# --------------------------------------------------------------------------------------------
# LR schedulers and grad scalers


def _restore_checked(obj: Any, tree: Any, kind: str, what: str) -> None:
    saved = _unwrap(what, tree, kind, obj)
    problems: list[str] = []
    _compare_tree("", saved, obj.state_dict(), problems)
    if problems:
        raise StateMismatchError(what, problems)
    # Clone: schedulers keep the loaded lists by reference (``__dict__.update``).
    obj.load_state_dict(_clone_tree(saved))


@_capture.register
def _(obj: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    return _wrap("lr_scheduler", obj, obj.state_dict())


@_restore.register
def _(obj: torch.optim.lr_scheduler.LRScheduler, tree: Any) -> None:
    _restore_checked(obj, tree, "lr_scheduler", f"LR scheduler {type(obj).__name__}")


# ReduceLROnPlateau is not an LRScheduler subclass in older torch releases.
if not issubclass(torch.optim.lr_scheduler.ReduceLROnPlateau, torch.optim.lr_scheduler.LRScheduler):

    @_capture.register
    def _(obj: torch.optim.lr_scheduler.ReduceLROnPlateau) -> dict[str, Any]:
        return _wrap("lr_scheduler", obj, obj.state_dict())

    @_restore.register
    def _(obj: torch.optim.lr_scheduler.ReduceLROnPlateau, tree: Any) -> None:
        _restore_checked(obj, tree, "lr_scheduler", f"LR scheduler {type(obj).__name__}")


@_capture.register
def _(obj: torch.amp.GradScaler) -> dict[str, Any]:
    # torch.cuda.amp.GradScaler subclasses torch.amp.GradScaler, so this covers both. A
    # disabled scaler has an empty state dict; the restore's key check then refuses to mix them.
    return _wrap("grad_scaler", obj, obj.state_dict())


@_restore.register
def _(obj: torch.amp.GradScaler, tree: Any) -> None:
    what = f"grad scaler {type(obj).__name__}"
    saved = _unwrap(what, tree, "grad_scaler", obj)
    live = obj.state_dict()
    if bool(saved) != bool(live):
        raise StateMismatchError(
            what,
            [
                f"enabled: recorded {bool(saved)}, got {obj.is_enabled()}; create the scaler "
                "with the same enabled= setting as when recorded"
            ],
        )
    _restore_checked(obj, tree, "grad_scaler", what)


# --------------------------------------------------------------------------------------------
# digests and non-finite checks


def raw_bytes(t: torch.Tensor) -> Any:
    """Return the bytes of ``t``'s elements (on the CPU, contiguous), for hashing."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    # Viewing as bytes works for every dtype, including bfloat16 and float8 that NumPy lacks.
    # (typed Any: numpy's stubs do not declare the buffer protocol xxhash's stubs ask for)
    return cast(Any, t.view(torch.uint8).numpy())


def tensor_digest(t: torch.Tensor) -> str:
    """Return a fast 64-bit xxh3 hex digest of a tensor's raw bytes (C order, on CPU).

    Only the bytes are hashed, not the dtype or shape.

    Args:
        t: any tensor, on any device, of any dtype (bfloat16 included).

    Returns:
        16 hex characters.
    """
    return xxhash.xxh3_64_hexdigest(raw_bytes(t))


def parameters_digest(module: torch.nn.Module) -> str:
    """Return one xxh3 hex digest over every parameter of a module, in registration order.

    Each parameter's name, dtype and shape are hashed with its bytes, so a reshaped or cast
    parameter changes the digest even when its bytes do not.

    Args:
        module: the module.

    Returns:
        16 hex characters.
    """
    h = xxhash.xxh3_64()
    for name, p in module.named_parameters():
        h.update(f"{name}|{p.dtype}|{tuple(p.shape)}|".encode())
        h.update(raw_bytes(p))
    return h.hexdigest()


def _first_bad_tensor(t: torch.Tensor) -> tuple[tuple[int, ...], Any] | None:
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return None
    t = t.detach()
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return None
    flat = int(torch.nonzero(bad.reshape(-1))[0, 0])
    index = tuple(int(i) for i in np.unravel_index(flat, tuple(t.shape))) if t.dim() else ()
    return index, t.reshape(-1)[flat].item()


def _first_bad_array(a: np.ndarray) -> tuple[tuple[int, ...], Any] | None:
    if a.dtype.kind not in "fc" or a.size == 0:
        return None
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    flat = int(np.flatnonzero(bad)[0])
    index = tuple(int(i) for i in np.unravel_index(flat, a.shape)) if a.ndim else ()
    return index, a.reshape(-1)[flat].item()


def first_nonfinite(tree: Any, path: str = "") -> tuple[str, tuple[int, ...], Any] | None:
    """Find the first NaN or infinity in a state tree, walking it in order.

    Args:
        tree: a state tree (as returned by :func:`capture_object`).
        path: prefix for the returned path.

    Returns:
        ``(path, index, value)`` where ``path`` joins dict keys / list indices with ``/``,
        ``index`` is the element index inside the array (``()`` for scalars and 0-d arrays), and
        ``value`` is the offending number; or ``None`` when everything is finite.
    """
    if isinstance(tree, torch.Tensor):
        found = _first_bad_tensor(tree)
    elif isinstance(tree, np.ndarray):
        found = _first_bad_array(tree)
    elif isinstance(tree, (float, np.floating, np.complexfloating)) and not isinstance(tree, bool):
        found = None if np.isfinite(tree) else ((), tree)
    elif isinstance(tree, dict):
        for k, v in tree.items():
            hit = first_nonfinite(v, f"{path}/{k}")
            if hit is not None:
                return hit
        return None
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            hit = first_nonfinite(v, f"{path}/{i}")
            if hit is not None:
                return hit
        return None
    else:
        return None
    if found is None:
        return None
    return (path or "/", found[0], found[1])
