"""The training examples: record, restore in a fresh process, verify the next updates bit-exactly.

Each example runs as a user would run it (``python examples/<name>.py``, from the repo root),
in subprocesses, so the restore really happens in a fresh interpreter.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

import replaykit
from replaykit._analysis.layers import first_divergent_module, first_update_divergence

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.integration  # runs the examples, in fresh processes

# (example, extra recording args, whether env steps run between the verified updates)
CASES: list[tuple[str, list[str], bool]] = [
    ("reinforce_cartpole", [], True),
    ("dqn_cartpole", [], True),
    ("ppo_cartpole", [], True),
    ("sac_pendulum", [], True),
    ("supervised_dataloader", [], False),
]


def _load(script: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, script)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def in_process() -> Iterator[None]:
    """Record in this process, then put back the global torch settings the examples change."""
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    torch.set_num_threads(1)  # as the examples' main() does, so replays match bit for bit
    yield
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(threads)
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def _record(script: Path, name: str, out: Path, *args: str) -> None:
    mod = _load(script, f"_rk_example_{name}")
    assert mod.main(["--out", str(out), *args]) == 0


_DRIVER = """
import importlib.util, sys
for name, script, path in zip(*[iter(sys.argv[1:])] * 3):
    spec = importlib.util.spec_from_file_location("_rk_" + name, script)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    print(f"@@ {name} rc={mod.main(['--replay', path])}", flush=True)
"""


def test_examples_restore_mid_loop_in_a_fresh_process(tmp_path: Path, in_process: None) -> None:
    argv = []
    for name, extra, _ in CASES:
        out = tmp_path / f"{name}.h5"
        _record(EXAMPLES / f"{name}.py", name, out, *extra)
        with replaykit.Recording(out) as r:
            snap = r.snapshot_info("mid")
            assert snap.meta["updates"] > 0 and snap.meta["nonfinite"] is None
            assert r.stream("updates").rows >= snap.meta["updates"] + 5
        argv += [name, str(EXAMPLES / f"{name}.py"), str(out)]
    # One fresh interpreter restores every snapshot (each example's own --replay mode).
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    chunks = dict(
        re.findall(r"(?s)(.*?)@@ (\w+) rc=0\n", proc.stdout)[i][::-1] for i in range(len(CASES))
    )
    for name, _, env_steps in CASES:
        assert name in chunks, f"{name} did not verify:\n{proc.stdout}\n{proc.stderr}"
        m = re.search(r"verified (\d+) updates(?: and (\d+) env steps)?", chunks[name])
        assert m is not None, chunks[name]
        assert int(m.group(1)) >= 5, chunks[name]
        if env_steps:
            assert int(m.group(2)) > 0, chunks[name]


def _changed_sac(tmp_path: Path) -> Path:
    """The SAC example with a deliberate one-line change in the q2 loss."""
    src = (EXAMPLES / "sac_pendulum.py").read_text()
    old = "q2_loss = F.mse_loss(q2.squeeze(-1), target)"
    assert src.count(old) == 1
    changed = tmp_path / "sac_pendulum_changed.py"
    changed.write_text(src.replace(old, "q2_loss = F.smooth_l1_loss(q2.squeeze(-1), target)"))
    return changed


def test_one_line_loss_change_is_named_by_diff_and_layer_localisation(
    tmp_path: Path, in_process: None, capsys: pytest.CaptureFixture[str]
) -> None:
    original, changed = EXAMPLES / "sac_pendulum.py", _changed_sac(tmp_path)
    short = ["--updates", "4", "--snapshot-update", "2"]
    loc = ["--localize-update", "0"]
    _record(original, "sac_a", tmp_path / "a.h5", *short)
    _record(changed, "sac_b", tmp_path / "b.h5", *short)
    _record(original, "sac_al", tmp_path / "al.h5", *short, *loc)
    _record(changed, "sac_bl", tmp_path / "bl.h5", *short, *loc)
    res = replaykit.diff_recordings(tmp_path / "a.h5", tmp_path / "b.h5")
    assert not res.match
    first = first_update_divergence(res)
    assert first is not None
    assert (first.row, first.key) == (0, "updates/probe/q2_loss")
    # Same code twice: no divergence at all, layer probes included.
    assert first_divergent_module((tmp_path / "al.h5", tmp_path / "al.h5")) is None
    layer = first_divergent_module(
        replaykit.diff_recordings(tmp_path / "al.h5", tmp_path / "bl.h5")
    )
    assert layer is not None
    assert layer.update == 0 and layer.kind == "grad"
    assert layer.module.startswith("critic.q2"), layer.describe()
    # The CLI names the same module.
    from replaykit.cli import main as cli_main

    capsys.readouterr()
    assert cli_main(["diff", str(tmp_path / "al.h5"), str(tmp_path / "bl.h5")]) == 1
    assert f"first divergent module: {layer.describe()}" in capsys.readouterr().out
    # Replaying the original recording with the changed code fails at the first update after
    # the snapshot, naming the probe.
    capsys.readouterr()
    assert _load(changed, "_rk_sac_replay").main(["--replay", str(tmp_path / "a.h5")]) == 1
    out = capsys.readouterr().out
    assert "update 2" in out and "update/q2_loss" in out, out
