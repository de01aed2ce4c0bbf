"""pytest plugin for replaykit: options and fixtures only; the work lives in the library.

Registered through the ``pytest11`` entry point, so installing replaykit makes
these available in every test session:

Options:
    ``--replaykit-update=MODE``: golden recordings to (re)write: ``none`` (default; a
    missing golden file fails), ``missing``, ``failing`` (re-record files that no
    longer match), ``all``.

Every option starts with ``--replaykit-``, and the plugin declares no markers and skips
no tests, so it cannot clash with a project's own options (``--run-slow``) or markers
(``slow``). Importing it imports nothing heavy (no numpy, h5py, gymnasium or torch):
the library loads when a fixture is first used.

Fixtures:
    ``replaykit_recording``: ``open(path, verify=True)`` -> :class:`~replaykit.Recording`,
    relative to the test file's directory, closed after the test.
    ``replaykit_restore``: ``restore(path, snapshot=None, **kwargs)`` -> :class:`~replaykit.Replay`
    (wraps :func:`replaykit.restore`), relative to the test file's directory.
    ``replaykit_golden``: a :class:`~replaykit.testing.GoldenFiles` whose
    ``check(path, record)`` records with the test's own code and compares with the golden file.

Use :func:`replaykit.testing.assert_replay` to step a restored replay on and fail
with the first-divergence report.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from replaykit._format.store import Recording
    from replaykit._session.replay import Replay
    from replaykit.testing import GoldenFiles

__all__ = [
    "pytest_addoption",
    "pytest_configure",
    "pytest_terminal_summary",
    "replaykit_golden",
    "replaykit_recording",
    "replaykit_restore",
]

_MODES = ("none", "missing", "failing", "all")


class _State:
    """Per-session plugin state (kept in ``config.stash``)."""

    def __init__(self, update: str) -> None:
        self.update = update
        self.updated: list[pathlib.Path] = []


_STATE = pytest.StashKey[_State]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare ``--replaykit-update`` (the plugin's only option)."""
    group = parser.getgroup("replaykit")
    group.addoption(
        "--replaykit-update",
        action="store",
        default="none",
        choices=_MODES,
        metavar="MODE",
        help="golden recordings to (re)write: none (default: a missing golden file fails), "
        "missing (record missing files), failing (re-record files that no longer match), all",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Keep the session's update mode and the golden files it writes in ``config.stash``."""
    config.stash[_STATE] = _State(str(config.getoption("--replaykit-update")))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """List the golden recordings this session wrote."""
    state = config.stash.get(_STATE, None)
    if state is None or not state.updated:
        return
    terminalreporter.write_sep("-", "replaykit golden recordings written")
    for path in state.updated:
        terminalreporter.write_line(str(path))


def _test_dir(request: pytest.FixtureRequest) -> pathlib.Path:
    return pathlib.Path(request.path).parent


@pytest.fixture
def replaykit_recording(request: pytest.FixtureRequest) -> Iterator[Callable[..., Recording]]:
    """Open recordings relative to the test file's directory; all are closed after the test."""
    from replaykit._format.store import Recording

    base = _test_dir(request)
    opened: list[Recording] = []

    def open_recording(path: str | pathlib.Path, *, verify: bool = True) -> Recording:
        rec = Recording(base / path, verify=verify)
        opened.append(rec)
        return rec

    yield open_recording
    for rec in opened:
        rec.close()


@pytest.fixture
def replaykit_restore(request: pytest.FixtureRequest) -> Iterator[Callable[..., Replay]]:
    """Restore a snapshot (relative path) into the test's freshly built env/model/optimizer.

    ``restore(path, snapshot=None, *, env=..., track={...}, **kwargs)`` calls
    :func:`replaykit.restore`; every replay is closed after the test.
    """
    from replaykit._session.replay import restore

    base = _test_dir(request)
    replays: list[Replay] = []

    def restore_snapshot(
        path: str | pathlib.Path, snapshot: str | int | None = None, **kwargs: Any
    ) -> Replay:
        __tracebackhide__ = True
        rep = restore(base / path, snapshot, **kwargs)
        replays.append(rep)
        return rep

    yield restore_snapshot
    for rep in replays:
        rep.close()


@pytest.fixture
def replaykit_golden(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> GoldenFiles:
    """Golden recordings relative to the test file's directory, honouring ``--replaykit-update``."""
    from replaykit.testing import GoldenFiles

    state = request.config.stash[_STATE]
    return GoldenFiles(_test_dir(request), tmp_path, state.update, on_update=state.updated.append)
