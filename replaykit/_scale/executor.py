"""Run one plain function over many plain-data payloads; yield results as they finish.

Three backends behind one call, :func:`run_tasks`:

- ``serial``: in this process, one payload after another.
- ``process``: a local pool of ``workers`` processes started with the ``spawn`` method
  (fresh interpreters: nothing of the parent's state, no forked locks). Each worker runs
  one payload at a time, so a worker that dies is charged to the payload it was running:
  that payload is tried again in a fresh worker, and a second death is its failure.
- ``ray``: one Ray task per payload (``max_retries`` covers a worker that dies), on a
  local Ray started on demand with ``num_cpus=workers`` or on the cluster at
  ``ray_address`` (``"auto"`` or ``HOST:PORT``). Ray is imported here only, and only
  when this backend runs; without it the error says which ``pip install`` to run.

The function must be importable by name (a module-level function) and payloads and results
must be plain data (dicts, lists, strings, numbers). A payload whose function raises is a
failure at once (functions report their own expected errors in their result); a worker
that dies is retried up to ``attempts`` tries in all. Results arrive as
``(index, outcome)`` pairs where ``outcome`` is ``{"ok": True, "value": ...}`` or
``{"ok": False, "error": "one line"}``; the others' results are unaffected by a failure.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import json
import logging
import multiprocessing
import multiprocessing.connection
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from replaykit.errors import MissingExtraError, UsageError

__all__ = [
    "BACKENDS",
    "DEFAULT_ATTEMPTS",
    "RAY_INSTALL",
    "choose_backend",
    "ray_available",
    "run_tasks",
]

BACKENDS = ("serial", "process", "ray")
#: Tries per payload when a worker dies: the first and one retry.
DEFAULT_ATTEMPTS = 2
RAY_INSTALL = 'pip install "replaykit[ray]"'

# Pool messages are JSON bytes (payloads and results are plain data), never pickles.
_STOP = b"stop"

Task = Callable[[dict[str, Any]], dict[str, Any]]
Outcome = dict[str, Any]


def ray_available() -> bool:
    """Whether Ray can be imported (checked without importing it)."""
    return importlib.util.find_spec("ray") is not None


def choose_backend(backend: str | None, workers: int, ray_address: str | None) -> str:
    """Resolve ``backend`` (``None``: automatic) for ``workers`` and ``ray_address``.

    Automatic: ``ray`` when an address is given or when ``workers > 1`` and Ray is
    installed; ``process`` when ``workers > 1`` without Ray; else ``serial``.

    Raises:
        UsageError: an unknown backend, ``workers < 1``, an address with a non-Ray backend,
            or a ``HOST:PORT`` address nothing answers at.
        MissingExtraError: the ``ray`` backend (or an address) without Ray installed.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UsageError(f"workers must be an integer >= 1, got {workers!r}")
    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if ray_address is not None and backend not in (None, "ray"):
        raise UsageError(f"--ray-address needs the ray backend, not {backend!r}")
    if backend is None:
        if ray_address is not None:
            backend = "ray"
        elif workers > 1:
            backend = "ray" if ray_available() else "process"
        else:
            backend = "serial"
    if backend == "ray" and not ray_available():
        raise MissingExtraError(
            f"running on Ray needs the ray package, which is not installed: {RAY_INSTALL} "
            "(or pass --workers N without --ray-address for a local process pool)"
        )
    if ray_address is not None:
        _check_reachable(ray_address)
    return backend


def run_tasks(
    fn: Task,
    payloads: Sequence[dict[str, Any]],
    *,
    backend: str = "serial",
    workers: int = 1,
    ray_address: str | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
) -> Iterator[tuple[int, Outcome]]:
    """Run ``fn`` on every payload; yield ``(index, outcome)`` as each one finishes.

    Example:
        >>> from replaykit._scale.executor import run_tasks
        >>> sorted(i for i, o in run_tasks(dict, [{"a": 1}, {"b": 2}]) if o["ok"])
        [0, 1]
    """
    if attempts < 1:
        raise UsageError(f"attempts must be >= 1, got {attempts}")
    if not payloads:
        return iter(())
    if backend == "serial":
        return _serial(fn, payloads)
    if backend == "process":
        return _process(fn, payloads, min(workers, len(payloads)), attempts)
    if backend == "ray":
        return _ray(fn, payloads, workers, ray_address, attempts)
    raise UsageError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


def _failure_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:2000]


def _call(fn: Task, payload: dict[str, Any]) -> Outcome:
    try:
        return {"ok": True, "value": fn(payload)}
    except Exception as exc:
        return {"ok": False, "error": _failure_line(exc)}


def _serial(fn: Task, payloads: Sequence[dict[str, Any]]) -> Iterator[tuple[int, Outcome]]:
    for i, p in enumerate(payloads):
        yield i, _call(fn, p)


# --------------------------------------------------------------------------- process pool


def _worker_main(conn: multiprocessing.connection.Connection, fn: Task) -> None:
    """Run payloads (a pool worker): sent on ``conn`` until it sends ``None``."""
    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if msg == _STOP:
            return
        i, payload = json.loads(msg)
        conn.send_bytes(json.dumps([i, _call(fn, payload)]).encode())


class _Worker:
    def __init__(self, ctx: Any, fn: Task) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, fn), daemon=True)
        self.proc.start()
        child.close()
        self.task: int | None = None

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send_bytes(_STOP)
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _process(
    fn: Task, payloads: Sequence[dict[str, Any]], workers: int, attempts: int
) -> Iterator[tuple[int, Outcome]]:
    ctx = multiprocessing.get_context("spawn")
    todo = collections.deque(range(len(payloads)))
    tries = [0] * len(payloads)
    pool = [_Worker(ctx, fn) for _ in range(workers)]
    try:
        while todo or any(w.task is not None for w in pool):
            for k in range(len(pool)):
                if pool[k].task is None and todo:
                    if not pool[k].proc.is_alive():  # killed while idle: start a fresh one
                        pool[k].stop()
                        pool[k] = _Worker(ctx, fn)
                    idle = pool[k]
                    idle.task = todo.popleft()
                    tries[idle.task] += 1
                    with contextlib.suppress(OSError):
                        # A worker that dies now is seen below, like one dying mid-task.
                        idle.conn.send_bytes(json.dumps([idle.task, payloads[idle.task]]).encode())
            busy = [w for w in pool if w.task is not None]
            waitables: list[Any] = [w.conn for w in busy] + [w.proc.sentinel for w in busy]
            ready = set(multiprocessing.connection.wait(waitables))
            for k, w in enumerate(pool):
                if w.task is None or (w.conn not in ready and w.proc.sentinel not in ready):
                    continue
                got = _receive(w)
                if got is not None:
                    w.task = None
                    yield got
                    continue
                # The worker died while running its payload: a fresh worker takes its place.
                i, w.task = w.task, None
                code = w.proc.exitcode
                w.stop()
                pool[k] = _Worker(ctx, fn)
                if tries[i] < attempts:
                    todo.appendleft(i)
                else:
                    yield (
                        i,
                        {
                            "ok": False,
                            "error": f"the worker process died ({_exit_text(code)}) in each of "
                            f"{tries[i]} tries",
                        },
                    )
    finally:
        for w in pool:
            w.stop()


def _receive(w: _Worker) -> tuple[int, Outcome] | None:
    try:
        if w.conn.poll():
            i, outcome = json.loads(w.conn.recv_bytes())
            return int(i), outcome
    except (EOFError, OSError):
        return None
    if w.proc.is_alive():
        # The sentinel cannot fire while the process lives; a wake-up without a message.
        w.proc.join(timeout=0.5)
        if w.proc.is_alive():
            return _receive_blocking(w)
    return None


def _receive_blocking(w: _Worker) -> tuple[int, Outcome] | None:
    try:
        i, outcome = json.loads(w.conn.recv_bytes())
    except (EOFError, OSError):
        return None
    return int(i), outcome


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


# --------------------------------------------------------------------------- Ray


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingExtraError(
            f"running on Ray needs the ray package, which is not installed ({exc}): {RAY_INSTALL}"
        ) from None
    return ray


# Seconds to wait for a TCP connection to a cluster's HOST:PORT before Ray is asked to join
# it (Ray itself keeps retrying an unreachable address for minutes).
CONNECT_TIMEOUT_S = 5.0


def _check_reachable(address: str) -> None:
    """Refuse a ``HOST:PORT`` nothing listens on, at once (``auto`` and ``ray://`` pass)."""
    import socket

    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--ray-address must be auto or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UsageError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
            "`ray start --head` there, or check the address (its GCS port, 6379 by default)"
        ) from None


def _ray(
    fn: Task,
    payloads: Sequence[dict[str, Any]],
    workers: int,
    address: str | None,
    attempts: int,
) -> Iterator[tuple[int, Outcome]]:
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
        if address is None:
            options.update(num_cpus=workers, include_dashboard=False)
        else:
            options["address"] = address
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"at {address}" if address else "locally"
            raise UsageError(f"could not start or reach a Ray cluster {where}: {exc}") from None
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=attempts - 1, retry_exceptions=False)(_call)
        remote = remote.options(name=f"replaykit.{getattr(fn, '__name__', 'task')}")
        refs = {remote.remote(fn, p): i for i, p in enumerate(payloads)}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                i = refs.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    outcome = {
                        "ok": False,
                        "error": f"the Ray task failed in each of {attempts} tries "
                        f"({type(exc).__name__}: {first[:300]})",
                    }
                yield i, outcome
    finally:
        if started:
            ray.shutdown()
