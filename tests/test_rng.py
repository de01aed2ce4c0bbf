from __future__ import annotations

import copy
import random
import warnings
from typing import Any

import numpy as np
import pytest
import torch

from replaykit._state.rng import (
    capture_generator,
    capture_global_rngs,
    restore_generator,
    restore_global_rngs,
)
from replaykit.errors import CaptureError, ReplaykitWarning, StateMismatchError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _serialize(tree: Any) -> Any:
    """Stand-in for the HDF5 codec: a deep copy with every tensor moved to CPU."""

    def cpu(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.detach().to("cpu").clone()
        if isinstance(x, dict):
            return {k: cpu(v) for k, v in x.items()}
        if isinstance(x, list):
            return [cpu(v) for v in x]
        if isinstance(x, tuple):
            return tuple(cpu(v) for v in x)
        return x

    return cpu(copy.deepcopy(tree))


def _draw_global() -> tuple[Any, ...]:
    return (
        [random.random() for _ in range(5)],
        random.gauss(0.0, 1.0),
        np.random.random(5).tolist(),
        float(np.random.standard_normal()),
        torch.rand(5).tolist(),
        torch.randn(3).tolist(),
    )


@pytest.fixture(autouse=True)
def _keep_global_rngs():
    # Tests here reseed global streams; put them back so other test files see no difference.
    py, npy, tc = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(py)
    np.random.set_state(npy)
    torch.set_rng_state(tc)


def test_global_roundtrip_identical_draws():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    # Leave a cached Gaussian in Python and NumPy so those hidden bits are exercised too.
    random.gauss(0.0, 1.0)
    np.random.standard_normal()
    tree = _serialize(capture_global_rngs())
    first = _draw_global()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_global_rngs(tree)
    assert _draw_global() == first


def test_global_restore_after_reseed_from_captured_state_in_other_order():
    random.seed(5)
    tree = capture_global_rngs()
    a = _draw_global()
    b = _draw_global()
    restore_global_rngs(tree)
    assert _draw_global() == a
    assert _draw_global() == b
    # The tree is not consumed or aliased by a restore.
    restore_global_rngs(tree)
    assert _draw_global() == a


def test_global_capture_shares_no_memory():
    tree = capture_global_rngs()
    before = tree["python"]["state"].copy()
    key_before = tree["numpy"]["key"].copy()
    cpu_before = tree["torch"]["cpu"].clone()
    _draw_global()
    np.random.random(1000)
    assert np.array_equal(tree["python"]["state"], before)
    assert np.array_equal(tree["numpy"]["key"], key_before)
    assert torch.equal(tree["torch"]["cpu"], cpu_before)


def test_global_tree_layout():
    tree = capture_global_rngs()
    assert tree["python"]["state"].dtype == np.uint32
    assert tree["python"]["state"].shape == (625,)
    assert tree["numpy"]["key"].dtype == np.uint32
    assert tree["numpy"]["key"].shape == (624,)
    assert tree["torch"]["cpu"].dtype == torch.uint8
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        assert tree["torch"]["cuda"] is None


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda t: t["python"].__setitem__("state", t["python"]["state"][:600]), "state"),
        (
            lambda t: t["python"].__setitem__("state", t["python"]["state"].astype(np.int64)),
            "uint32",
        ),
        (lambda t: t["numpy"].__setitem__("key", t["numpy"]["key"][:100]), "key"),
        (lambda t: t["numpy"].__setitem__("kind", "PCG64"), "kind"),
        (lambda t: t["torch"].__setitem__("cpu", t["torch"]["cpu"][:-1]), "uint8"),
        (lambda t: t["torch"].__setitem__("cpu", t["torch"]["cpu"].to(torch.int16)), "int16"),
        (lambda t: t.pop("numpy"), "numpy"),
    ],
)
def test_global_restore_mismatch_raises_and_changes_nothing(mutate, needle):
    tree = _serialize(capture_global_rngs())
    mutate(tree)
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    untouched = capture_global_rngs()
    with pytest.raises(StateMismatchError, match=needle):
        restore_global_rngs(tree)
    after = capture_global_rngs()
    # All parts are validated before any stream changes.
    assert np.array_equal(after["python"]["state"], untouched["python"]["state"])
    assert np.array_equal(after["numpy"]["key"], untouched["numpy"]["key"])
    assert torch.equal(after["torch"]["cpu"], untouched["torch"]["cpu"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_cuda_state_on_machine_without_cuda_warns_and_restores_cpu():
    torch.manual_seed(11)
    tree = _serialize(capture_global_rngs())
    tree["torch"]["cuda"] = {"device_count": 1, "states": [torch.zeros(16, dtype=torch.uint8)]}
    expected = _draw_global()
    with pytest.warns(ReplaykitWarning, match="no CUDA"):
        restore_global_rngs(tree)
    assert _draw_global() == expected


# ---- single generators -------------------------------------------------------------------


def _np_draw(g: Any) -> list[float]:
    return [*g.random(4).tolist(), float(g.standard_normal())]


GENERATOR_FACTORIES = {
    "pcg64": np.random.default_rng,
    "pcg64dxsm": lambda seed: np.random.Generator(np.random.PCG64DXSM(seed)),
    "mt19937": lambda seed: np.random.Generator(np.random.MT19937(seed)),
    "philox": lambda seed: np.random.Generator(np.random.Philox(seed)),
    "sfc64": lambda seed: np.random.Generator(np.random.SFC64(seed)),
}


@pytest.mark.parametrize("name", sorted(GENERATOR_FACTORIES))
def test_numpy_generator_roundtrip_into_fresh_object(name):
    g = GENERATOR_FACTORIES[name](1)
    g.integers(0, 2**31, size=3, dtype=np.uint32)  # leaves a buffered 32-bit half behind
    tree = _serialize(capture_generator(g))
    expected = _np_draw(g) + g.integers(0, 2**31, size=3, dtype=np.uint32).tolist()
    fresh = GENERATOR_FACTORIES[name](12345)
    restore_generator(fresh, tree)
    got = _np_draw(fresh) + fresh.integers(0, 2**31, size=3, dtype=np.uint32).tolist()
    assert got == expected
    # Same object again: capture did not alias the live state.
    restore_generator(g, tree)
    assert _np_draw(g) == expected[:5]


def test_numpy_generator_wrong_bit_generator_class():
    tree = capture_generator(np.random.default_rng(0))
    with pytest.raises(StateMismatchError, match="bit_generator: recorded 'PCG64', got 'MT19937'"):
        restore_generator(np.random.Generator(np.random.MT19937(0)), tree)


def test_numpy_generator_wrong_array_dtype_and_size():
    g = np.random.Generator(np.random.SFC64(0))
    tree = capture_generator(g)
    bad = copy.deepcopy(tree)
    bad["state"]["state"]["state"] = bad["state"]["state"]["state"].astype(np.int64)
    with pytest.raises(StateMismatchError, match="int64"):
        restore_generator(g, bad)
    bad = copy.deepcopy(tree)
    bad["state"]["state"]["state"] = bad["state"]["state"]["state"][:3]
    with pytest.raises(StateMismatchError, match=r"\(3,\)"):
        restore_generator(g, bad)
    bad = copy.deepcopy(tree)
    del bad["state"]["has_uint32"]
    with pytest.raises(StateMismatchError, match="has_uint32"):
        restore_generator(g, bad)


def test_numpy_generator_value_rejected_by_numpy_is_mismatch():
    g = np.random.default_rng(0)
    tree = capture_generator(g)
    tree["state"]["state"]["state"] = -5  # negative 128-bit state
    with pytest.raises(StateMismatchError):
        restore_generator(g, tree)


def test_bit_generator_roundtrip():
    bg = np.random.PCG64(3)
    bg.random_raw(7)
    tree = _serialize(capture_generator(bg))
    expected = bg.random_raw(5).tolist()
    fresh = np.random.PCG64(4)
    restore_generator(fresh, tree)
    assert fresh.random_raw(5).tolist() == expected
    with pytest.raises(StateMismatchError, match="type"):
        restore_generator(np.random.default_rng(0), tree)


def test_random_state_roundtrip_with_cached_gaussian():
    rs = np.random.RandomState(5)
    rs.standard_normal()  # caches the second Gaussian of the Box-Muller pair
    tree = _serialize(capture_generator(rs))
    assert tree["state"]["has_gauss"] == 1
    expected = [float(rs.standard_normal()), *rs.random_sample(3).tolist()]
    fresh = np.random.RandomState(6)
    restore_generator(fresh, tree)
    assert [float(fresh.standard_normal()), *fresh.random_sample(3).tolist()] == expected


def test_random_state_mismatches():
    rs = np.random.RandomState(5)
    tree = capture_generator(rs)
    bad = copy.deepcopy(tree)
    bad["state"]["key"] = bad["state"]["key"].astype(np.uint64)
    with pytest.raises(StateMismatchError, match="uint64"):
        restore_generator(rs, bad)
    with pytest.raises(StateMismatchError, match=r"numpy\.RandomState"):
        restore_generator(rs, capture_generator(np.random.default_rng(0)))


def test_python_random_roundtrip_subclass_and_gauss():
    class MyRandom(random.Random):
        pass

    r = MyRandom(8)
    r.gauss(0.0, 1.0)
    tree = _serialize(capture_generator(r))
    expected = [r.gauss(0.0, 1.0), r.random(), r.getrandbits(100)]
    fresh = random.Random(9)
    restore_generator(fresh, tree)
    assert [fresh.gauss(0.0, 1.0), fresh.random(), fresh.getrandbits(100)] == expected


def test_python_random_mismatches():
    r = random.Random(8)
    tree = capture_generator(r)
    bad = copy.deepcopy(tree)
    bad["state"]["state"] = bad["state"]["state"].astype(np.float64)
    with pytest.raises(StateMismatchError, match="uint32"):
        restore_generator(r, bad)
    bad = copy.deepcopy(tree)
    bad["state"]["version"] = 2
    with pytest.raises(StateMismatchError, match="version"):
        restore_generator(r, bad)
    with pytest.raises(StateMismatchError, match=r"python\.Random"):
        restore_generator(r, capture_generator(np.random.RandomState(0)))


def test_torch_cpu_generator_roundtrip():
    g = torch.Generator().manual_seed(4)
    torch.rand(3, generator=g)
    tree = _serialize(capture_generator(g))
    assert tree["device"] == "cpu"
    expected = torch.randn(6, generator=g)
    fresh = torch.Generator().manual_seed(5)
    restore_generator(fresh, tree)
    assert torch.equal(torch.randn(6, generator=fresh), expected)


def test_torch_generator_mismatches():
    g = torch.Generator().manual_seed(4)
    tree = capture_generator(g)
    bad = copy.deepcopy(tree)
    bad["state"] = bad["state"][:100]
    with pytest.raises(StateMismatchError, match=r"\(100,\)"):
        restore_generator(g, bad)
    bad = copy.deepcopy(tree)
    bad["state"] = bad["state"].to(torch.int32)
    with pytest.raises(StateMismatchError, match="int32"):
        restore_generator(g, bad)
    bad = copy.deepcopy(tree)
    bad["device"] = "cuda:0"
    with pytest.raises(StateMismatchError, match="device type"):
        restore_generator(g, bad)


def test_unsupported_generator_type_is_capture_error():
    with pytest.raises(CaptureError, match="register"):
        capture_generator(object())
    with pytest.raises(CaptureError, match="register"):
        restore_generator(object(), {})


@pytest.mark.cuda
@cuda
def test_torch_cuda_generator_roundtrip():
    g = torch.Generator(device="cuda").manual_seed(4)
    torch.rand(3, generator=g, device="cuda")
    tree = _serialize(capture_generator(g))
    assert tree["device"].startswith("cuda")
    expected = torch.randn(6, generator=g, device="cuda")
    fresh = torch.Generator(device="cuda").manual_seed(5)
    restore_generator(fresh, tree)
    assert torch.equal(torch.randn(6, generator=fresh, device="cuda"), expected)
    with pytest.raises(StateMismatchError, match="device type"):
        restore_generator(torch.Generator(), tree)


@pytest.mark.cuda
@cuda
def test_global_cuda_roundtrip_and_device_count_mismatch():
    torch.zeros(1, device="cuda")  # initialise CUDA so the capture includes it
    state_before = torch.cuda.get_rng_state_all()
    try:
        torch.cuda.manual_seed_all(3)
        tree = _serialize(capture_global_rngs())
        assert tree["torch"]["cuda"]["device_count"] == torch.cuda.device_count()
        expected = torch.rand(8, device="cuda")
        torch.cuda.manual_seed_all(4)
        restore_global_rngs(tree)
        assert torch.equal(torch.rand(8, device="cuda"), expected)
        tree["torch"]["cuda"]["device_count"] += 1
        with pytest.raises(StateMismatchError, match="CUDA device"):
            restore_global_rngs(tree)
    finally:
        torch.cuda.set_rng_state_all(state_before)


def test_no_warning_on_plain_roundtrip():
    tree = capture_global_rngs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restore_global_rngs(tree)
