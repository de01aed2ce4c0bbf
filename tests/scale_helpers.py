"""Task functions for the executor tests: importable by name in spawned workers and Ray tasks."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any


def square(p: dict[str, Any]) -> dict[str, Any]:
    return {"x": p["x"] * p["x"], "pid": os.getpid()}


def die_once(p: dict[str, Any]) -> dict[str, Any]:
    """SIGKILL this worker the first time it runs payload ``p`` (a marker file says so)."""
    if p.get("marker"):
        marker = Path(p["marker"])
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
    return square(p)


def die_always(p: dict[str, Any]) -> dict[str, Any]:
    if p.get("die"):
        os.kill(os.getpid(), signal.SIGKILL)
    return square(p)


def boom(p: dict[str, Any]) -> dict[str, Any]:
    if p.get("boom"):
        raise RuntimeError("boom\nsecond line")
    return square(p)
