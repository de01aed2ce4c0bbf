"""Command lines for Python child processes that run no code from the current directory.

``python -m replaykit...`` puts the current directory first on ``sys.path``: a file
``xxhash.py`` (or ``numpy.py``, ``h5py.py``, ...) that arrived beside a recording in a bug
report would run as soon as the child imports that name. Every replaykit child starts
Python in isolated mode (``-I``: no current directory, no script directory, no user site,
no ``PYTHON*`` environment variables) and loads *this* replaykit package by its file
location, not through ``sys.path``, so it works the same from an installed, an editable or
a plain source-tree replaykit.

Example:
    >>> argv = python_child_argv("replaykit", "--help")
    >>> argv[1]
    '-I'
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["python_child_argv"]

# Run by ``python -I -c``: load the replaykit package from the directory given (argv[1]),
# then run module argv[2] as ``__main__`` with the remaining arguments, like ``-m`` does.
_BOOTSTRAP = (
    "import sys, importlib.util as u, runpy\n"
    "d, m = sys.argv[1], sys.argv[2]\n"
    "s = u.spec_from_file_location('replaykit', d + '/__init__.py', "
    "submodule_search_locations=[d])\n"
    "p = u.module_from_spec(s)\n"
    "sys.modules['replaykit'] = p\n"
    "s.loader.exec_module(p)\n"
    "sys.argv = [m] + sys.argv[3:]\n"
    "runpy.run_module(m, run_name='__main__', alter_sys=True)\n"
)


def python_child_argv(module: str, *args: str) -> list[str]:
    """Return the argv that runs ``python -m module args...`` without trusting the cwd.

    Args:
        module: a module inside replaykit (``"replaykit"``, ``"replaykit._analysis.check"``),
            run as ``__main__``.
        *args: its command-line arguments.

    Returns:
        ``[sys.executable, "-I", "-c", <bootstrap>, <package dir>, module, *args]``: isolated
        mode, with this replaykit loaded from its own directory. Dependencies (numpy, h5py,
        ...) come from the interpreter's site-packages only; ``PYTHONPATH`` is ignored.

    Raises:
        ValueError: ``module`` is not replaykit or one of its modules.
    """
    if module != "replaykit" and not module.startswith("replaykit."):
        raise ValueError(f"module must be replaykit or a replaykit module, got {module!r}")
    pkg_dir = str(Path(__file__).resolve().parent.parent)
    return [sys.executable, "-I", "-c", _BOOTSTRAP, pkg_dir, module, *args]
