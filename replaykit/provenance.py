"""What produced a recording: library versions, device, determinism flags, git revision.

Provenance is stored in every file and compared on replay and in ``replaykit
diff``, so a divergence report can say which difference in setup most likely
explains it.

Example:
    >>> p = collect()
    >>> sorted(p)[:4]
    ['argv', 'created', 'determinism', 'device']
    >>> differences(p, p)
    []
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from typing import Any

from replaykit._state.envs import families as _families

__all__ = ["DRIFT_KEYS", "INFORMATIONAL_PREFIXES", "RL_LIBRARIES", "collect", "differences"]

_CORE_PACKAGES = ("replaykit", "numpy", "torch", "gymnasium", "h5py")
# Core packages first, then every env family's distributions (the table in families.py).
_PACKAGES = _CORE_PACKAGES + tuple(d for d in _families.distributions() if d not in _CORE_PACKAGES)
# RL libraries whose version is recorded when the recording process has imported them
# (import name -> distribution name); a library never imported cannot have shaped the run.
RL_LIBRARIES: dict[str, str] = {
    "stable_baselines3": "stable-baselines3",
    "sb3_contrib": "sb3-contrib",
    "cleanrl": "cleanrl",
    "torchrl": "torchrl",
    "tianshou": "tianshou",
    "envpool": "envpool",
    "pettingzoo": "pettingzoo",
}
# Keys that describe a run but never explain a divergence (the code's own revision is a
# different code, not a different setup): shown as information, not as setup differences.
INFORMATIONAL_PREFIXES: tuple[str, ...] = ("git.",)

# Keys whose difference most often explains a divergence, most likely first.
DRIFT_KEYS: tuple[str, ...] = (
    "versions.torch",
    "device.cuda",
    "device.cudnn",
    "device.names",
    "determinism",
    "versions.numpy",
    "versions.gymnasium",
    *(f"versions.{d}" for d in _PACKAGES if d not in _CORE_PACKAGES),
    *(f"versions.{d}" for d in RL_LIBRARIES.values()),
    "versions.python",
    "platform.machine",
    "platform.system",
    "versions.replaykit",
    "versions.h5py",
    "versions.hdf5",
)


# Installed versions found so far in this process. A distribution's metadata lookup scans
# sys.path (~3 ms each, ~25 ms per recording for the packages listed): a sweep of small
# recordings spent a third of each recording's time here. A found version is kept (the
# modules this process imported are that version's, even if the package is upgraded on disk
# meanwhile); a missing one is looked up again, since it may be installed later.
_FOUND_VERSIONS: dict[str, str] = {}


def _version(dist: str) -> str | None:
    found = _FOUND_VERSIONS.get(dist)
    if found is not None:
        return found
    from importlib import metadata  # slow to import; only collect() needs it

    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
    _FOUND_VERSIONS[dist] = version
    return version


def _git(cwd: str | None = None) -> dict[str, Any]:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            cwd=cwd,
            check=False,
        )
        if rev.returncode != 0:
            return {}
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=2,
            cwd=cwd,
            check=False,
        )
        return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}


def _script_dir() -> str | None:
    """Return the directory of the running script (``sys.argv[0]``), or ``None`` for the cwd.

    The revision that matters is the one of the code that ran, which need not be the
    current directory's (a script run as ``python ~/proj/train.py`` from elsewhere).
    """
    script = sys.argv[0] if sys.argv else ""
    if script and script not in ("-c", "-m") and os.path.isfile(script):
        return os.path.dirname(os.path.abspath(script))
    return None


def collect(*, git: bool = True) -> dict[str, Any]:
    """Describe this process's setup as JSON-able data."""
    import torch

    from replaykit._format.store import library_versions
    from replaykit.determinism import determinism_flags

    versions: dict[str, Any] = {p: _version(p) for p in _PACKAGES}
    for module, dist in RL_LIBRARIES.items():
        if module in sys.modules:
            versions[dist] = _version(dist)
    versions["python"] = platform.python_version()
    versions["hdf5"] = library_versions()["hdf5"]
    device: dict[str, Any] = {"cuda": None, "cudnn": None, "names": ["cpu"]}
    if torch.cuda.is_available():
        device["cuda"] = torch.version.cuda
        device["cudnn"] = torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
        device["names"] = ["cpu"] + [
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        ]
    out: dict[str, Any] = {
        "versions": versions,
        "device": device,
        "determinism": determinism_flags(),
        "platform": {
            "system": platform.system(),
            "machine": platform.machine(),
            "processor": platform.processor() or None,
        },
        "argv": list(sys.argv),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
        "pid": os.getpid(),
    }
    if git:
        g = _git(_script_dir())
        if g:
            out["git"] = g
    return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = d
    return out


def differences(
    a: dict[str, Any], b: dict[str, Any], *, informational: bool = False
) -> list[tuple[str, Any, Any]]:
    """Return ``(key, value in a, value in b)`` for setup keys that differ, likeliest cause first.

    Keys that always differ between runs (creation time, pid, argv) are ignored, and so are
    informational keys (the git revision) unless ``informational`` is true. An RL library
    recorded by one side only was not imported by the other: not a difference either.
    """
    fa, fb = _flatten(a), _flatten(b)
    ignore: tuple[str, ...] = ("created", "pid", "argv")
    if not informational:
        ignore += INFORMATIONAL_PREFIXES
    one_sided = {f"versions.{d}" for d in RL_LIBRARIES.values()}
    diffs = [
        (k, fa.get(k), fb.get(k))
        for k in sorted(set(fa) | set(fb))
        if not k.startswith(ignore)
        and fa.get(k) != fb.get(k)
        and not (k in one_sided and (k not in fa or k not in fb))
    ]

    def rank(item: tuple[str, Any, Any]) -> tuple[int, str]:
        for i, key in enumerate(DRIFT_KEYS):
            if item[0] == key or item[0].startswith(key + "."):
                return (i, item[0])
        return (len(DRIFT_KEYS), item[0])

    return sorted(diffs, key=rank)
