"""The package surface: `replaykit.__all__` is exactly what the package exports, and documented."""

from __future__ import annotations

import subprocess
import sys

import replaykit


def test_all_names_exist_and_are_documented() -> None:
    assert len(replaykit.__all__) == len(set(replaykit.__all__))
    for name in replaykit.__all__:
        obj = getattr(replaykit, name)
        if name != "__version__":
            assert obj.__doc__, f"replaykit.{name} has no docstring"


def test_no_public_name_is_left_out_of_all() -> None:
    public = {
        n
        for n, v in vars(replaykit).items()
        if not n.startswith("_")
        and not isinstance(v, type(sys))
        and n != "annotations"
        and n != "Any"
    }
    assert public <= set(replaykit.__all__), sorted(public - set(replaykit.__all__))


def test_import_does_not_load_torch() -> None:
    # Reading, diffing and checking files must not pay for torch (seconds and ~200 MB).
    code = "import sys, replaykit; replaykit.diff_recordings; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
