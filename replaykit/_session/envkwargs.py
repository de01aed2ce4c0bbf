"""Vet the env kwargs a recording names before an env is built from them.

A recording's env spec is input from an untrusted file. Its kwargs are passed to the
env's constructor, and some constructors open files (MuJoCo's ``xml_file``), import
modules or call what they are given, or open a window (``render_mode="human"``). So a
kwarg from a file is used only when it is plainly data: a number, a bool, ``None``, a
short string that names no file and no module, or lists and dicts of those. Anything
else is refused by name, with the two ways to allow it: pass the value yourself
(``make_env(path, xml_file=...)``), or allow the recorded value explicitly
(``make_env(path, allow_kwargs=["xml_file"])``, ``replaykit replay --allow-env-kwarg``).

Example:
    >>> vet_env_kwargs("CartPole-v1", {"sutton_barto_reward": True})
    {'sutton_barto_reward': True}
    >>> vet_env_kwargs("Hopper-v5", {"xml_file": "/etc/passwd"})
    Traceback (most recent call last):
    ...
    replaykit.errors.UnsafeFileError: ...
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from replaykit.errors import UnsafeFileError

__all__ = ["SAFE_RENDER_MODES", "vet_env_kwargs"]

#: Render modes that draw off-screen only; ``"human"`` opens a window.
SAFE_RENDER_MODES = frozenset({"rgb_array", "rgb_array_list", "ansi", "depth_array"})

# Kwarg names that by convention name a file, a directory or something to load.
_FILE_NAME = re.compile(r"(file|path|dir|xml|rom|url|uri|module|class|entry_point)", re.I)
# "pkg.mod:attr" (an entry point) or a dotted name of three or more parts (a module path).
_MODULE_LIKE = re.compile(r"^\s*[A-Za-z_][\w.]*:[A-Za-z_][\w.]*\s*$|^[A-Za-z_]\w*(\.\w+){2,}$")
_MAX_STRING = 256
_MAX_ITEMS = 1024
_MAX_DEPTH = 8
_SHOWN = 60  # characters of a refused value shown in the message


def _problem(name: str, value: Any, depth: int = 0) -> str | None:
    """Say why ``value`` (of kwarg ``name``) is not plain data, or return ``None``."""
    if depth > _MAX_DEPTH:
        return f"nested more than {_MAX_DEPTH} levels"
    if value is None or isinstance(value, (bool, int, float)):
        return None
    if isinstance(value, str):
        return _string_problem(value)
    if isinstance(value, (list, Mapping)):
        return _container_problem(name, value, depth)
    return f"a {type(value).__name__}, not plain data"


def _container_problem(name: str, value: list[Any] | Mapping[Any, Any], depth: int) -> str | None:
    kind = "list" if isinstance(value, list) else "dict"
    if len(value) > _MAX_ITEMS:
        return f"a {kind} of {len(value)} items (at most {_MAX_ITEMS})"
    items = value if isinstance(value, list) else value.values()
    if isinstance(value, Mapping) and not all(isinstance(k, str) for k in value):
        return "a dict with a key that is not a string"
    return next((p for v in items if (p := _problem(name, v, depth + 1))), None)


def _string_problem(value: str) -> str | None:
    if len(value) > _MAX_STRING:
        return f"a string of {len(value)} characters (at most {_MAX_STRING})"
    if "/" in value or "\\" in value or value.startswith(("~", ".")):
        return f"{value!r} looks like a file path"
    if _MODULE_LIKE.match(value):
        return f"{value!r} looks like a module or entry point"
    if not value.isprintable():
        return "a string with control characters"
    return None


def vet_env_kwargs(
    env_id: str, kwargs: Mapping[str, Any], allow: Collection[str] = ()
) -> dict[str, Any]:
    """Return ``kwargs`` from a recording if every one is plain data, else refuse.

    Args:
        env_id: the recorded env id (for the message).
        kwargs: the recorded kwargs.
        allow: kwarg names the caller trusts as recorded (used without any check).

    Returns:
        A copy of ``kwargs``.

    Raises:
        UnsafeFileError: a kwarg names a file, a module or a callable, opens a window, or
            is not plain data; the message names it and says how to allow it.
    """
    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in allow:
            out[name] = value
            continue
        if not isinstance(name, str) or not name.isidentifier():
            why = "its name is not an identifier"
        elif name == "render_mode":
            ok = value is None or value in SAFE_RENDER_MODES
            why = "" if ok else f"render mode {value!r} opens a display or is unknown"
        elif _FILE_NAME.search(name) and value is not None:
            why = "its name says it names a file or something to load"
        else:
            why = _problem(name, value) or ""
        if why:
            raise UnsafeFileError(
                f"the recording builds {env_id!r} with kwarg {name}={_short(value)}: {why}; "
                f"a kwarg from a file is used only when it is plain data. Pass the value "
                f"yourself (make_env(path, {name}=...)) or allow the recorded one "
                f"(make_env(path, allow_kwargs=[{name!r}]), replaykit replay "
                f"--allow-env-kwarg {name})"
            )
        out[name] = value
    return out


def _short(value: Any) -> str:
    text = repr(value)
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
