"""Comparison rules: bit-exact by default, tolerances only when named."""

from __future__ import annotations

import numpy as np
import pytest

from replaykit._analysis.compare import (
    DiffResult,
    KeyDivergence,
    Mismatch,
    Rule,
    Rules,
    compare_arrays,
)
from replaykit.errors import UsageError


def test_identical_arrays_match() -> None:
    a = np.linspace(0, 1, 7, dtype=np.float32)
    assert compare_arrays(a, a.copy()) is None


def test_one_ulp_is_found_with_index_and_distance() -> None:
    a = np.zeros((2, 3), dtype=np.float64) + 1.0
    b = a.copy()
    b[1, 2] = np.nextafter(1.0, 2.0)
    m = compare_arrays(a, b)
    assert m is not None
    assert m.index == (1, 2) and m.ulp == 1 and m.count == 1 and m.total == 6
    assert m.abs_diff == pytest.approx(2.220446049250313e-16)


def test_signed_zero_and_nan_payload_differ_under_exact_rule() -> None:
    assert compare_arrays(np.array([0.0], np.float32), np.array([-0.0], np.float32)) is not None
    n1 = np.array([0x7FC00000], np.uint32).view(np.float32)
    n2 = np.array([0x7FC00001], np.uint32).view(np.float32)
    assert compare_arrays(n1, n2) is not None
    # Under a tolerance NaN matches NaN.
    assert compare_arrays(n1, n2, Rule(atol=1e-6)) is None


def test_dtype_and_shape_are_part_of_equality() -> None:
    m = compare_arrays(np.zeros(2, np.float32), np.zeros(2, np.float64))
    assert m is not None and m.reason == "dtype"
    m = compare_arrays(np.zeros(2), np.zeros(3))
    assert m is not None and m.reason == "shape"


def test_tolerances_apply_only_when_named() -> None:
    a = np.array([1.0, 2.0])
    b = a + 1e-9
    assert compare_arrays(a, b) is not None
    assert compare_arrays(a, b, Rule(atol=1e-8)) is None
    assert compare_arrays(a, b, Rule(rtol=1e-8)) is None
    assert compare_arrays(a, a + 1e-3, Rule(atol=1e-8)) is not None
    c = np.nextafter(a, 3)
    assert compare_arrays(a, c, Rule(max_ulp=1)) is None
    assert compare_arrays(a, np.nextafter(c, 3), Rule(max_ulp=1)) is not None


def test_rules_pick_first_matching_pattern_and_describe_themselves() -> None:
    rules = Rules({"obs/*": Rule(atol=1e-6), "probe/*": Rule(max_ulp=4)})
    assert rules.for_key("obs/pos").atol == 1e-6
    assert rules.for_key("probe/logits").max_ulp == 4
    assert rules.for_key("reward").exact
    assert "bit-exact" in rules.describe() and "atol=1e-06" in rules.describe()
    with pytest.raises(UsageError):
        Rule(atol=-1)


def test_bfloat16_bits_compare_with_ulps() -> None:
    a = np.array([0x3F80, 0x4000], dtype=np.uint16)  # 1.0, 2.0 in bfloat16
    b = a.copy()
    b[1] += 1
    m = compare_arrays(a, b, logical="bfloat16")
    assert m is not None and m.index == (1,) and m.ulp == 1
    assert m.expected == 2.0 and m.actual == pytest.approx(2.015625)


def test_integer_and_bool_mismatch_report_values() -> None:
    m = compare_arrays(np.array([1, 2, 3]), np.array([1, 5, 3]))
    assert m is not None and m.expected == 2 and m.actual == 5 and m.ulp is None
    m = compare_arrays(np.array(True), np.array(False))
    assert m is not None and m.index == ()


def _kd(stream: str, key: str, row: int, at_step: int | None = None) -> KeyDivergence:
    return KeyDivergence(stream, key, row, Mismatch("value"), "bit-exact", at_step=at_step)


def test_divergences_order_in_time_then_by_recorded_probe_order() -> None:
    # Update 2 was logged at step count 5 (after step row 4); within it the loop logged
    # "z_first" before "a_second", so that order wins over the alphabet.
    ups = [_kd("updates", f"updates/probe/{n}", 2, at_step=5) for n in ("a_second", "z_first")]
    divs = [*ups, _kd("steps", "obs", 5), _kd("steps", "action", 4), _kd("resets", "resets/obs", 1)]
    res = DiffResult("a", "b", divs, {}, [], [], [], "bit-exact", 5)
    keys = [d.key for d in res.ordered()]
    assert keys == [
        "resets/obs",
        "action",
        "updates/probe/a_second",
        "updates/probe/z_first",
        "obs",
    ]
    res.update_probe_order = ["z_first", "a_second"]
    keys = [d.key for d in res.ordered()]
    assert keys == [
        "resets/obs",
        "action",
        "updates/probe/z_first",
        "updates/probe/a_second",
        "obs",
    ]
    assert res.first is not None and res.first.key == "resets/obs"
    # Keys the recording does not list (older files) come after the listed ones.
    assert res.probe_rank("updates/probe/unlisted") == 2 and res.probe_rank("obs") == 2
