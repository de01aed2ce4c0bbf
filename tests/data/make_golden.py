"""Write the golden file of the current format version, which the format tests pin.

Run once per format version; older versions' files stay as they are, so readers keep
reading them::

    python tests/data/make_golden.py tests/data/golden_v2.h5
    python tests/data/make_golden.py tests/data/golden_v3.h5 --spill

``--spill`` adds what makes a writer stamp version 3: metadata and a commit record longer
than an attribute holds, which spill into slot datasets.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from replaykit._format.store import RecordingWriter

# The inputs, spelled out so tests can check what a reader returns against them.
OBS = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5
ACTION = np.array([0, 1, 1], dtype=np.int64)
REWARD = np.array([1.0, -0.0, 0.5], dtype=np.float64)
PROBE_BF16_BITS = np.array([[0x3F80, 0xBF80], [0x0000, 0x8000], [0x7FC0, 0x4049]], dtype=np.uint16)


def snapshot_tree() -> dict[str, Any]:
    return {
        "w": torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16),
        "steps": {3: np.float32(0.25)},
        "pair": (np.zeros((0, 2), np.float64), 2**70),
        "flag": True,
        "nan": float("nan"),
    }


# Version 3 inputs: user metadata of 20,000 bytes and a stream of WIDE_COLUMNS columns
# with long names (a commit record of ~19 KiB).
USER_BLOB = "golden " * 2857 + "x"
WIDE_COLUMNS = 32


def wide_name(i: int) -> str:
    return f"info/{'diagnostic_' * 24}{i:03d}"


def write(path: str, spill: bool = False) -> None:
    meta: dict[str, Any] = {
        "env_id": "Golden-v0",
        "seed": 7,
        "created": "2026-01-01T00:00:00.000+00:00",
    }
    if spill:
        meta["user"] = {"blob": USER_BLOB}
    # 16-row blocks (hence chunks) keep the wide stream's file small.
    options: dict[str, Any] = {"block_rows": 16} if spill else {}
    prov = {"versions": {"replaykit": "golden"}}
    with RecordingWriter(path, meta=meta, provenance=prov, **options) as w:
        s = w.stream("steps")
        obs = s.column("obs", np.dtype(np.float32), (4,))
        act = s.column("action", np.dtype(np.int64), ())
        rew = s.column("reward", np.dtype(np.float64), ())
        probe = s.column("probe/x", np.dtype(np.uint16), (2,), logical="bfloat16", optional=True)
        for i in range(3):
            obs.buf[s.pos] = OBS[i]
            act.buf[s.pos] = ACTION[i]
            rew.buf[s.pos] = REWARD[i]
            if i != 1:
                probe.buf[s.pos] = PROBE_BF16_BITS[i]
                assert probe.present is not None
                probe.present[s.pos] = True
            s.end_row()
        w.write_snapshot("s0", snapshot_tree(), {"step": 3, "episode": 0})
        if spill:
            wide = w.stream("wide")
            cols = [
                wide.column(wide_name(i), np.dtype(np.float64), ()) for i in range(WIDE_COLUMNS)
            ]
            for j, col in enumerate(cols):
                col.buf[wide.pos] = j * 0.5
            wide.end_row()


if __name__ == "__main__":
    write(sys.argv[1], spill="--spill" in sys.argv[2:])
