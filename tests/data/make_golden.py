"""Write the golden file of the current format version, which the format tests pin.

Run once per format version; older versions' files stay as they are, so readers keep
reading them::

    python tests/data/make_golden.py tests/data/golden_v2.h5
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


def write(path: str) -> None:
    meta = {"env_id": "Golden-v0", "seed": 7, "created": "2026-01-01T00:00:00.000+00:00"}
    with RecordingWriter(path, meta=meta, provenance={"versions": {"replaykit": "golden"}}) as w:
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


if __name__ == "__main__":
    write(sys.argv[1])
