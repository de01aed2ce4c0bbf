"""Capture and restore of every random-number stream, as state trees.

Two entry points:

* :func:`capture_global_rngs` / :func:`restore_global_rngs` cover the process-wide streams:
  Python's ``random`` module, NumPy's legacy global ``RandomState``, torch's CPU generator and,
  when CUDA is initialised, torch's CUDA generator on every device.
* :func:`capture_generator` / :func:`restore_generator` cover one generator object:
  ``numpy.random.Generator``, ``numpy.random.BitGenerator``, ``numpy.random.RandomState``,
  ``random.Random`` and ``torch.Generator``. Dispatch is by type (``functools.singledispatch``),
  so other generator types can be registered with ``capture_generator.register``.

Every restore checks the saved state against the live generator first (kind, sizes, dtypes) and
raises :class:`~replaykit.errors.StateMismatchError` instead of feeding a generator a state that
does not belong to it.

Example:
    >>> import random
    >>> state = capture_global_rngs()
    >>> a = random.random()
    >>> restore_global_rngs(state)
    >>> random.random() == a
    True
"""

from __future__ import annotations

import functools
import random
import warnings
from typing import Any

import numpy as np
import torch

from replaykit.errors import CaptureError, ReplaykitWarning, StateMismatchError

__all__ = [
    "capture_generator",
    "capture_global_rngs",
    "restore_generator",
    "restore_global_rngs",
]

# Python's Mersenne Twister state: 624 words plus the position index.
_PY_STATE_LEN = 625


# --------------------------------------------------------------------------------------------
# small helpers


def _describe_array(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"ndarray {a.dtype} {tuple(a.shape)}"
    if isinstance(a, torch.Tensor):
        return f"tensor {str(a.dtype).removeprefix('torch.')} {tuple(a.shape)}"
    return type(a).__name__


def _check_keys(what: str, saved: Any, required: tuple[str, ...]) -> None:
    if not isinstance(saved, dict):
        raise StateMismatchError(what, [f"recorded a {type(saved).__name__}, not a dict"])
    missing = [k for k in required if k not in saved]
    if missing:
        raise StateMismatchError(what, [f"missing key {k!r}" for k in missing])


# One branch per kind of node in an RNG state tree; the branches are the specification.
def _compare_state(path: str, saved: Any, live: Any, out: list[str]) -> None:  # noqa: C901
    """Append one line to ``out`` per structural difference between two RNG state trees."""
    if isinstance(live, dict):
        if not isinstance(saved, dict):
            out.append(f"{path}: recorded a {type(saved).__name__}, not a dict")
            return
        for k in live:
            if k not in saved:
                out.append(f"{path}/{k}: missing in snapshot")
        for k in saved:
            if k not in live:
                out.append(f"{path}/{k}: not part of the live generator's state")
        for k in live:
            if k in saved:
                _compare_state(f"{path}/{k}", saved[k], live[k], out)
    elif isinstance(live, np.ndarray):
        if (
            not isinstance(saved, np.ndarray)
            or saved.dtype != live.dtype
            or saved.shape != live.shape
        ):
            out.append(f"{path}: recorded {_describe_array(saved)}, got {_describe_array(live)}")
    elif isinstance(live, torch.Tensor):
        if (
            not isinstance(saved, torch.Tensor)
            or saved.dtype != live.dtype
            or saved.shape != live.shape
        ):
            out.append(f"{path}: recorded {_describe_array(saved)}, got {_describe_array(live)}")
    elif isinstance(live, (bool, int, float, str)) or live is None:
        ok_types: tuple[type, ...]
        if isinstance(live, bool):
            ok_types = (bool, int, np.integer)
        elif isinstance(live, int):
            ok_types = (int, np.integer)
        elif isinstance(live, float):
            ok_types = (float, np.floating)
        elif isinstance(live, str):
            ok_types = (str,)
        else:
            ok_types = (type(None),)
        if not isinstance(saved, ok_types):
            out.append(
                f"{path}: recorded {type(saved).__name__} {saved!r}, got {type(live).__name__}"
            )


def _copy_tree(x: Any) -> Any:
    """Deep copy of a NumPy bit-generator state dict (arrays copied, scalars as Python types)."""
    if isinstance(x, dict):
        return {k: _copy_tree(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x


# --------------------------------------------------------------------------------------------
# Python `random`


def _capture_python_state(state: tuple[Any, ...]) -> dict[str, Any]:
    version, words, gauss_next = state
    return {
        "version": int(version),
        "state": np.asarray(words, dtype=np.uint32),
        "gauss_next": None if gauss_next is None else float(gauss_next),
    }


def _python_state_from_tree(what: str, saved: Any) -> tuple[Any, ...]:
    _check_keys(what, saved, ("version", "state", "gauss_next"))
    problems: list[str] = []
    words = saved["state"]
    if (
        not isinstance(words, np.ndarray)
        or words.dtype != np.uint32
        or words.shape != (_PY_STATE_LEN,)
    ):
        problems.append(
            f"state: recorded {_describe_array(words)}, not ndarray uint32 ({_PY_STATE_LEN},)"
        )
    version = saved["version"]
    live_version = random.Random.VERSION  # what random.getstate()[0] says, without the copy
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)):
        problems.append(f"version: recorded a {type(version).__name__}, not an int")
    elif int(version) != live_version:
        problems.append(f"version: recorded {int(version)}, got {live_version}")
    gauss = saved["gauss_next"]
    if gauss is not None and not isinstance(gauss, (float, np.floating)):
        problems.append(f"gauss_next: recorded a {type(gauss).__name__}, not a float or None")
    if problems:
        raise StateMismatchError(what, problems)
    return (
        int(version),
        tuple(words.tolist()),  # uint32 elements come out as Python ints
        None if gauss is None else float(gauss),
    )


# --------------------------------------------------------------------------------------------
# NumPy legacy RandomState


def _capture_legacy_state(state: Any) -> dict[str, Any]:
    # get_state() returns ('MT19937', key[624] uint32, pos, has_gauss, cached_gaussian).
    kind, key, pos, has_gauss, cached = state
    return {
        "kind": str(kind),
        "key": np.array(key, dtype=np.uint32, copy=True),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _legacy_state_from_tree(what: str, saved: Any, live: Any) -> tuple[Any, ...]:
    _check_keys(what, saved, ("kind", "key", "pos", "has_gauss", "cached_gaussian"))
    live_kind, live_key = live[0], live[1]
    problems: list[str] = []
    if saved["kind"] != live_kind:
        problems.append(f"kind: recorded {saved['kind']!r}, got {live_kind!r}")
    key = saved["key"]
    if (
        not isinstance(key, np.ndarray)
        or key.dtype != live_key.dtype
        or key.shape != live_key.shape
    ):
        problems.append(f"key: recorded {_describe_array(key)}, got {_describe_array(live_key)}")
    for name in ("pos", "has_gauss"):
        v = saved[name]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            problems.append(f"{name}: recorded a {type(v).__name__}, not an int")
    if not isinstance(saved["cached_gaussian"], (float, np.floating)):
        problems.append(
            f"cached_gaussian: recorded a {type(saved['cached_gaussian']).__name__}, not a float"
        )
    if problems:
        raise StateMismatchError(what, problems)
    return (
        str(saved["kind"]),
        key.copy(),
        int(saved["pos"]),
        int(saved["has_gauss"]),
        float(saved["cached_gaussian"]),
    )


# --------------------------------------------------------------------------------------------
# torch


def _check_byte_state(what: str, saved: Any, live: torch.Tensor) -> torch.Tensor:
    if (
        not isinstance(saved, torch.Tensor)
        or saved.dtype != live.dtype
        or saved.shape != live.shape
    ):
        raise StateMismatchError(
            what, [f"recorded {_describe_array(saved)}, got {_describe_array(live)}"]
        )
    # set_rng_state wants a contiguous CPU ByteTensor whatever device the generator is on.
    return saved.detach().to("cpu").contiguous().clone()


def _cuda_ready() -> bool:
    # Never initialise CUDA merely to capture: that costs seconds and changes the process.
    return bool(torch.cuda.is_available() and torch.cuda.is_initialized())  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------------------------
# global streams


def capture_global_rngs() -> dict[str, Any]:
    """Capture every process-wide RNG stream as a state tree.

    Covers Python's ``random`` module, NumPy's legacy global generator (``np.random.*``), torch's
    CPU generator and, only if CUDA is already initialised, the CUDA generator of every device.
    CUDA is never initialised just to capture; a process that has not touched CUDA has not
    drawn from it either.

    Returns:
        A state tree for :func:`restore_global_rngs`. It shares no memory with the generators.
    """
    cuda: dict[str, Any] | None = None
    if _cuda_ready():
        states = torch.cuda.get_rng_state_all()
        cuda = {
            "device_count": int(torch.cuda.device_count()),
            "states": [s.detach().to("cpu").clone() for s in states],
        }
    return {
        "python": _capture_python_state(random.getstate()),
        "numpy": _capture_legacy_state(np.random.get_state(legacy=True)),
        "torch": {
            "cpu": torch.get_rng_state().clone(),
            "cuda": cuda,
        },
    }


def restore_global_rngs(tree: dict[str, Any]) -> None:
    """Restore every process-wide RNG stream from a tree made by :func:`capture_global_rngs`.

    All parts are checked before any stream is changed, so a mismatch leaves every stream as it
    was. If the snapshot holds CUDA state but this machine has no CUDA, the CPU streams are
    restored and a :class:`~replaykit.errors.ReplaykitWarning` says the CUDA part was skipped.

    Args:
        tree: the state tree to restore.

    Raises:
        StateMismatchError: a part is missing or has the wrong kind, size or dtype, or the
            snapshot was taken with a different number of CUDA devices.
    """
    what = "global RNG state"
    _check_keys(what, tree, ("python", "numpy", "torch"))
    py_state = _python_state_from_tree("Python random state", tree["python"])
    np_state = _legacy_state_from_tree(
        "NumPy global RNG state", tree["numpy"], np.random.get_state(legacy=True)
    )
    _check_keys("torch RNG state", tree["torch"], ("cpu", "cuda"))
    cpu_state = _check_byte_state(
        "torch CPU RNG state", tree["torch"]["cpu"], torch.get_rng_state()
    )
    cuda = tree["torch"]["cuda"]
    cuda_states: list[torch.Tensor] | None = None
    if cuda is not None:
        _check_keys("torch CUDA RNG state", cuda, ("device_count", "states"))
        if torch.cuda.is_available():
            here = torch.cuda.device_count()
            saved_count = cuda["device_count"]
            if saved_count != here or len(cuda["states"]) != here:
                raise StateMismatchError(
                    "torch CUDA RNG state",
                    [f"recorded {saved_count} CUDA device(s), this machine has {here}"],
                )
            cuda_states = []
            for i, s in enumerate(cuda["states"]):
                live = torch.cuda.get_rng_state(i)
                cuda_states.append(_check_byte_state(f"torch CUDA RNG state of cuda:{i}", s, live))
        else:
            warnings.warn(
                "the snapshot holds CUDA RNG state but this machine has no CUDA; restored the "
                "CPU streams only, so results that draw CUDA random numbers may differ",
                ReplaykitWarning,
                stacklevel=2,
            )
    # Everything checked: now change the streams.
    random.setstate(py_state)
    np.random.set_state(np_state)
    torch.set_rng_state(cpu_state)
    if cuda_states is not None:
        torch.cuda.set_rng_state_all(cuda_states)


# --------------------------------------------------------------------------------------------
# single generator objects


@functools.singledispatch
def capture_generator(obj: Any) -> Any:
    """Capture the state of one generator object as a state tree.

    Supported: ``numpy.random.Generator``, ``numpy.random.BitGenerator`` (any subclass),
    ``numpy.random.RandomState``, ``random.Random`` (and subclasses) and ``torch.Generator``.
    Register more types with ``capture_generator.register`` and ``restore_generator.register``.

    Args:
        obj: the generator.

    Returns:
        A state tree for :func:`restore_generator`.

    Raises:
        CaptureError: the type is not a supported generator.
    """
    raise CaptureError(
        f"cannot capture RNG state of {type(obj).__module__}.{type(obj).__qualname__}: expected "
        "numpy.random.Generator/BitGenerator/RandomState, random.Random or torch.Generator; "
        "register a handler with replaykit.capture_generator.register and restore_generator"
    )


@functools.singledispatch
def restore_generator(obj: Any, tree: Any) -> None:
    """Restore one generator object in place from a tree made by :func:`capture_generator`.

    Args:
        obj: the live generator to overwrite (it need not be the one captured).
        tree: the saved state tree.

    Raises:
        StateMismatchError: the saved state belongs to another kind of generator or has the
            wrong size or dtype.
        CaptureError: the type is not a supported generator.
    """
    raise CaptureError(
        f"cannot restore RNG state into {type(obj).__module__}.{type(obj).__qualname__}: no "
        "handler registered; register one with replaykit._state.rng.restore_generator.register"
    )


@capture_generator.register
def _(obj: np.random.BitGenerator) -> dict[str, Any]:
    state = _copy_tree(obj.state)
    return {"type": "numpy.BitGenerator", "state": state}


@restore_generator.register
def _(obj: np.random.BitGenerator, tree: Any) -> None:
    _restore_bit_generator(obj, tree, "numpy.BitGenerator")


def _restore_bit_generator(bitgen: np.random.BitGenerator, tree: Any, expected: str) -> None:
    what = f"RNG state of {type(bitgen).__name__}"
    _check_keys(what, tree, ("type", "state"))
    if tree["type"] != expected:
        raise StateMismatchError(what, [f"type: recorded {tree['type']!r}, got {expected!r}"])
    live = bitgen.state
    saved = tree["state"]
    problems: list[str] = []
    if isinstance(saved, dict) and saved.get("bit_generator") != live["bit_generator"]:
        # Say the one thing that matters rather than a list of every key that differs.
        problems.append(
            f"bit_generator: recorded {saved.get('bit_generator')!r}, got {live['bit_generator']!r}"
        )
    else:
        _compare_state("state", saved, live, problems)
    if problems:
        raise StateMismatchError(what, problems)
    try:
        bitgen.state = _copy_tree(saved)  # never alias the caller's arrays
    except (ValueError, TypeError, OverflowError) as exc:
        raise StateMismatchError(what, [f"rejected by NumPy: {exc}"]) from exc


@capture_generator.register
def _(obj: np.random.Generator) -> dict[str, Any]:
    return {"type": "numpy.Generator", "state": _copy_tree(obj.bit_generator.state)}


@restore_generator.register
def _(obj: np.random.Generator, tree: Any) -> None:
    _restore_bit_generator(obj.bit_generator, tree, "numpy.Generator")


@capture_generator.register
def _(obj: np.random.RandomState) -> dict[str, Any]:
    return {"type": "numpy.RandomState", "state": _capture_legacy_state(obj.get_state(legacy=True))}


@restore_generator.register
def _(obj: np.random.RandomState, tree: Any) -> None:
    what = "RNG state of numpy.random.RandomState"
    _check_keys(what, tree, ("type", "state"))
    if tree["type"] != "numpy.RandomState":
        raise StateMismatchError(
            what, [f"type: recorded {tree['type']!r}, got 'numpy.RandomState'"]
        )
    state = _legacy_state_from_tree(what, tree["state"], obj.get_state(legacy=True))
    obj.set_state(state)


@capture_generator.register
def _(obj: random.Random) -> dict[str, Any]:
    return {"type": "python.Random", "state": _capture_python_state(obj.getstate())}


@restore_generator.register
def _(obj: random.Random, tree: Any) -> None:
    what = f"RNG state of {type(obj).__name__}"
    _check_keys(what, tree, ("type", "state"))
    if tree["type"] != "python.Random":
        raise StateMismatchError(what, [f"type: recorded {tree['type']!r}, got 'python.Random'"])
    obj.setstate(_python_state_from_tree(what, tree["state"]))


@capture_generator.register
def _(obj: torch.Generator) -> dict[str, Any]:
    return {
        "type": "torch.Generator",
        "device": str(obj.device),
        "state": obj.get_state().detach().to("cpu").clone(),
    }


@restore_generator.register
def _(obj: torch.Generator, tree: Any) -> None:
    what = f"RNG state of torch.Generator on {obj.device}"
    _check_keys(what, tree, ("type", "device", "state"))
    if tree["type"] != "torch.Generator":
        raise StateMismatchError(what, [f"type: recorded {tree['type']!r}, got 'torch.Generator'"])
    saved_type = str(tree["device"]).split(":")[0]
    if saved_type != obj.device.type:
        # CPU (Mersenne Twister) and CUDA (Philox seed/offset) states are different things.
        raise StateMismatchError(
            what, [f"device type: recorded {saved_type!r}, got {obj.device.type!r}"]
        )
    state = _check_byte_state(what, tree["state"], obj.get_state())
    obj.set_state(state)
