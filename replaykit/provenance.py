"""What produced a recording: library versions, device, determinism flags, git revision.

Provenance is stored in every file and compared on replay and in ``replaykit
diff``, so a divergence report can say which difference in setup most likely
explains it.

Example:
    >>> p = collect()
    >>> sorted(p)[:3]
    ['created', 'determinism', 'device']
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from typing import Any

from replaykit._state.envs import families as _families

__all__ = ["DRIFT_KEYS", "collect", "differences"]

_CORE_PACKAGES = ("replaykit", "numpy", "torch", "gymnasium", "h5py")
# Core packages first, then every env family's distributions (the table in families.py).
_PACKAGES = _CORE_PACKAGES + tuple(d for d in _families.distributions() if d not in _CORE_PACKAGES)

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
    "versions.python",
    "platform.machine",
    "platform.system",
    "versions.replaykit",
    "versions.h5py",
    "versions.hdf5",
    "git.revision",
    "git.dirty",
)


def _version(dist: str) -> str | None:
    from importlib import metadata  # slow to import; only collect() needs it

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


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


def collect(*, git: bool = True) -> dict[str, Any]:
    """Describe this process's setup as JSON-able data."""
    import torch

    from replaykit._format.store import library_versions
    from replaykit.determinism import determinism_flags

    versions: dict[str, Any] = {p: _version(p) for p in _PACKAGES}
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
        g = _git()
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


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Return ``(key, value in a, value in b)`` for setup keys that differ, likeliest cause first.

    Keys that always differ between runs (creation time, pid, argv) are ignored.
    """
    fa, fb = _flatten(a), _flatten(b)
    ignore = ("created", "pid", "argv")
    diffs = [
        (k, fa.get(k), fb.get(k))
        for k in sorted(set(fa) | set(fb))
        if not k.startswith(ignore) and fa.get(k) != fb.get(k)
    ]

    def rank(item: tuple[str, Any, Any]) -> tuple[int, str]:
        for i, key in enumerate(DRIFT_KEYS):
            if item[0] == key or item[0].startswith(key + "."):
                return (i, item[0])
        return (len(DRIFT_KEYS), item[0])

    return sorted(diffs, key=rank)
