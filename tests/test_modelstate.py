from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as lrs

from replaykit._state.modelstate import (
    capture_object,
    first_nonfinite,
    parameters_digest,
    register_state_type,
    restore_object,
    tensor_digest,
)
from replaykit._state.rng import capture_generator, capture_global_rngs, restore_generator
from replaykit._state.rng import restore_global_rngs as restore_rngs
from replaykit.errors import CaptureError, RestoreError, StateMismatchError

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


@pytest.fixture(autouse=True)
def _keep_torch_rng():
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


class MLP(nn.Module):
    def __init__(self, hidden: int = 32, extra: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(4, hidden),
            nn.ReLU(),
            nn.Dropout(0.3),  # consumes the global torch RNG: restoring it must matter
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),  # buffers incl. int64 num_batches_tracked
            nn.Tanh(),
            nn.Linear(hidden, 2),
        )
        if extra:
            self.head = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _param_bytes(model: nn.Module) -> list[tuple[str, torch.dtype, bytes]]:
    out = []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        out.append((name, t.dtype, flat.view(torch.uint8).numpy().tobytes()))
    return out


OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True, weight_decay=0.1),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, centered=True, momentum=0.5),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
}

SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "step": lambda o: lrs.StepLR(o, step_size=3, gamma=0.7),
    "onecycle": lambda o: lrs.OneCycleLR(o, max_lr=0.05, total_steps=40),
    "plateau": lambda o: lrs.ReduceLROnPlateau(o, patience=1, factor=0.5),
    "sequential": lambda o: lrs.SequentialLR(
        o, [lrs.LinearLR(o, start_factor=0.1, total_iters=4), lrs.ExponentialLR(o, 0.9)], [4]
    ),
    "chained": lambda o: lrs.ChainedScheduler(
        [lrs.ConstantLR(o, factor=0.5, total_iters=5), lrs.ExponentialLR(o, 0.95)]
    ),
    "warm_restarts": lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2),
    "lambda": lambda o: lrs.LambdaLR(o, lambda e: 0.97**e),
}


class Run:
    """A small but real training setup: model, optimizer, scheduler, scaler, data RNG."""

    def __init__(self, seed: int, opt: str = "adam", sched: str = "step", scaler: bool = True):
        torch.manual_seed(seed)
        self.model = MLP()
        self.opt = OPTIMIZERS[opt](self.model.parameters())
        self.sched = SCHEDULERS[sched](self.opt)
        # CPU GradScaler: float32 grads are scaled/unscaled exactly like on CUDA.
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
        self.use_scaler = scaler
        self.data = torch.Generator().manual_seed(seed + 1)

    def step(self) -> None:
        x = torch.randn(16, 4, generator=self.data)
        y = torch.randn(16, 2, generator=self.data)
        self.opt.zero_grad()
        loss = ((self.model(x) - y) ** 2).mean()
        if self.use_scaler:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        if isinstance(self.sched, lrs.ReduceLROnPlateau):
            self.sched.step(loss.item())
        else:
            self.sched.step()

    def capture(self) -> dict[str, Any]:
        return {
            "model": capture_object(self.model),
            "opt": capture_object(self.opt),
            "sched": capture_object(self.sched),
            "scaler": capture_object(self.scaler),
            "rng": capture_global_rngs(),
            "data": capture_generator(self.data),
        }

    def restore(self, tree: dict[str, Any]) -> None:
        restore_object(self.model, tree["model"])
        restore_object(self.opt, tree["opt"])
        restore_object(self.sched, tree["sched"])
        restore_object(self.scaler, tree["scaler"])
        restore_rngs(tree["rng"])
        restore_generator(self.data, tree["data"])

    def continue_(self, n: int) -> list[Any]:
        out = []
        for _ in range(n):
            self.step()
            out.append((_param_bytes(self.model), self.opt.param_groups[0]["lr"]))
        return out


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_resume_is_bit_identical_per_optimizer(opt):
    a = Run(0, opt=opt)
    for _ in range(7):
        a.step()
    snap = _serialize(a.capture())
    expected = a.continue_(5)
    b = Run(123, opt=opt)  # different init: restore must overwrite everything
    assert _param_bytes(b.model) != _param_bytes(a.model)
    b.restore(snap)
    got = b.continue_(5)
    assert got == expected


@pytest.mark.parametrize("sched", sorted(SCHEDULERS))
def test_resume_is_bit_identical_per_scheduler(sched):
    a = Run(0, sched=sched)
    for _ in range(6):
        a.step()
    snap = _serialize(a.capture())
    expected = a.continue_(5)
    b = Run(77, sched=sched)
    b.restore(snap)
    assert b.sched.state_dict() == snap["sched"]["state_dict"]
    assert b.continue_(5) == expected


def test_without_rng_restore_dropout_diverges():
    # Guards the test above: dropout really draws from the global torch RNG.
    a = Run(0)
    for _ in range(3):
        a.step()
    snap = _serialize(a.capture())
    expected = a.continue_(3)
    b = Run(5)
    del snap["rng"]
    restore_object(b.model, snap["model"])
    restore_object(b.opt, snap["opt"])
    restore_object(b.sched, snap["sched"])
    restore_object(b.scaler, snap["scaler"])
    restore_generator(b.data, snap["data"])
    assert b.continue_(3) != expected


def test_grad_scaler_state_roundtrip():
    a = Run(0)
    for _ in range(4):
        a.step()
    snap = _serialize(capture_object(a.scaler))
    assert snap["state_dict"]["scale"] == a.scaler.get_scale() != 2.0**10  # it grew
    fresh = torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=3)
    restore_object(fresh, snap)
    assert fresh.state_dict() == a.scaler.state_dict()
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    with pytest.raises(StateMismatchError, match="enabled"):
        restore_object(disabled, snap)
    other = torch.amp.GradScaler("cpu", growth_interval=3)
    bad = copy.deepcopy(snap)
    del bad["state_dict"]["_growth_tracker"]
    with pytest.raises(StateMismatchError, match="_growth_tracker"):
        restore_object(other, bad)


def test_restore_twice_from_same_tree_gives_same_result():
    # Optimizer.load_state_dict keeps matching tensors (always 'step') by reference; without a
    # defensive copy the first resumed step would rewrite the snapshot itself.
    a = Run(0, scaler=False)
    for _ in range(3):
        a.step()
    snap = a.capture()  # not serialized: this is the in-memory aliasing case
    first = Run(1, scaler=False)
    first.restore(snap)
    r1 = first.continue_(3)
    second = Run(2, scaler=False)
    second.restore(snap)
    assert second.continue_(3) == r1


def test_capture_shares_no_memory_with_live_objects():
    a = Run(0, scaler=False)
    a.step()
    snap = a.capture()
    frozen = copy.deepcopy(snap)
    a.continue_(2)
    assert torch.equal(
        snap["model"]["state_dict"]["net.0.weight"], frozen["model"]["state_dict"]["net.0.weight"]
    )
    for pid, st in snap["opt"]["state_dict"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, frozen["opt"]["state_dict"]["state"][pid][k])
    assert snap["sched"] == frozen["sched"]


def test_module_restore_keeps_identity_and_training_flags():
    m = MLP()
    m.eval()
    m.net[2].train()  # mixed modes must come back exactly
    tree = _serialize(capture_object(m))
    fresh = MLP()
    params_before = [id(p) for p in fresh.parameters()]
    restore_object(fresh, tree)
    assert [id(p) for p in fresh.parameters()] == params_before
    assert [s.training for s in fresh.modules()] == [s.training for s in m.modules()]
    assert fresh.net[2].training and not fresh.training
    assert _param_bytes(fresh) == _param_bytes(m)


def _mismatch(obj: Any, tree: Any) -> StateMismatchError:
    with pytest.raises(StateMismatchError) as info:
        restore_object(obj, tree)
    return info.value


def test_model_hidden_size_mismatch_lists_every_difference():
    tree = capture_object(MLP(hidden=32))
    err = _mismatch(MLP(hidden=16), tree)
    assert str(err).startswith("model MLP does not match")
    # 2 linears + batch norm weight/bias + 2 running stats + the first layer + last weight
    joined = "\n".join(err.mismatches)
    for key in ("net.0.weight", "net.0.bias", "net.3.weight", "net.4.running_mean", "net.6.weight"):
        assert key in joined
    assert "net.6.bias" not in joined  # (2,) in both
    assert "net.0.weight: recorded shape (32, 4), got (16, 4)" in joined


def test_model_dtype_mismatch_is_refused_not_cast():
    tree = capture_object(MLP())
    target = MLP().double()
    before = _param_bytes(target)
    err = _mismatch(target, tree)
    assert any("recorded dtype torch.float32, got torch.float64" in m for m in err.mismatches)
    assert _param_bytes(target) == before  # nothing loaded


def test_model_missing_and_extra_keys():
    tree = capture_object(MLP())
    err = _mismatch(MLP(extra=True), tree)
    assert any("head.weight: not in the snapshot" in m for m in err.mismatches)
    bad = copy.deepcopy(tree)
    bad["state_dict"]["bogus"] = torch.zeros(1)
    del bad["state_dict"]["net.0.bias"]
    err = _mismatch(MLP(), bad)
    assert any(
        "bogus: recorded tensor float32 (1,), not in the live model" in m for m in err.mismatches
    )
    assert any("net.0.bias: not in the snapshot" in m for m in err.mismatches)


def test_optimizer_group_count_mismatch():
    m = MLP()
    tree = capture_object(torch.optim.Adam(m.parameters()))
    two_groups = torch.optim.Adam(
        [{"params": m.net[0].parameters()}, {"params": m.net[3].parameters()}]
    )
    err = _mismatch(two_groups, tree)
    assert any("param groups: recorded 1, got 2" in x for x in err.mismatches)


def test_optimizer_params_per_group_mismatch():
    m = MLP()
    tree = capture_object(torch.optim.Adam(m.parameters()))
    err = _mismatch(torch.optim.Adam(m.net[0].parameters()), tree)
    assert any("params, got 2" in x for x in err.mismatches)


def test_sgd_state_into_adam_is_refused():
    a = Run(0, opt="sgd_nesterov", scaler=False)
    a.step()
    tree = _serialize(capture_object(a.opt))
    adam = torch.optim.Adam(MLP().parameters())
    err = _mismatch(adam, tree)
    joined = "\n".join(err.mismatches)
    assert "class: recorded torch.optim.sgd.SGD, got torch.optim.adam.Adam" in joined
    assert "option 'betas' missing in snapshot" in joined
    assert "option 'momentum' not used by Adam" in joined
    # Same check when the live Adam has already stepped (exact per-param template).
    b = Run(0, opt="adam", scaler=False)
    b.step()
    err = _mismatch(b.opt, tree)
    assert any("key 'exp_avg' missing in snapshot" in x for x in err.mismatches)


def test_optimizer_state_shape_and_dtype_checked_fresh_and_stepped():
    a = Run(0, scaler=False)
    a.step()
    tree = _serialize(capture_object(a.opt))
    small = MLP(hidden=16)
    err = _mismatch(torch.optim.Adam(small.parameters(), lr=1e-2), tree)
    assert any(
        "state.0.exp_avg: recorded shape (32, 4), got (16, 4) (the param's)" in x
        for x in err.mismatches
    )

    bad = copy.deepcopy(tree)
    bad["state_dict"]["state"][0]["exp_avg_sq"] = bad["state_dict"]["state"][0][
        "exp_avg_sq"
    ].double()
    fresh = Run(1, scaler=False)
    err = _mismatch(fresh.opt, bad)
    assert any(
        ".exp_avg_sq: recorded dtype torch.float64, got torch.float32" in x for x in err.mismatches
    )
    fresh.step()  # now the live state is the template
    err = _mismatch(fresh.opt, bad)
    assert any(
        ".exp_avg_sq: recorded tensor float64 (32, 4), got tensor float32 (32, 4)" in x
        for x in err.mismatches
    )


def test_optimizer_step_is_float32_scalar_and_restored():
    a = Run(0, scaler=False)
    for _ in range(3):
        a.step()
    tree = _serialize(capture_object(a.opt))
    step = tree["state_dict"]["state"][0]["step"]
    assert step.dtype == torch.float32 and step.dim() == 0 and float(step) == 3.0
    b = Run(1, scaler=False)
    restore_object(b.opt, tree)
    assert float(b.opt.state[b.model.net[0].weight]["step"]) == 3.0


def test_scheduler_mismatches():
    o = torch.optim.SGD(MLP().parameters(), lr=0.1)
    tree = capture_object(lrs.StepLR(o, step_size=2))
    err = _mismatch(lrs.ExponentialLR(o, 0.9), tree)
    assert any("class: recorded" in x for x in err.mismatches)
    seq = capture_object(lrs.SequentialLR(o, [lrs.ConstantLR(o), lrs.ExponentialLR(o, 0.9)], [2]))
    three = lrs.SequentialLR(
        o, [lrs.ConstantLR(o), lrs.ExponentialLR(o, 0.9), lrs.ExponentialLR(o, 0.8)], [2, 4]
    )
    err = _mismatch(three, seq)
    assert any("_schedulers: recorded 2 entries, got 3" in x for x in err.mismatches)


def test_scheduler_floats_roundtrip_exactly():
    o = torch.optim.SGD(MLP().parameters(), lr=0.1)
    s = lrs.OneCycleLR(o, max_lr=0.0123456789, total_steps=50)
    for _ in range(7):
        o.step()
        s.step()
    tree = _serialize(capture_object(s))
    o2 = torch.optim.SGD(MLP().parameters(), lr=0.1)
    s2 = lrs.OneCycleLR(o2, max_lr=0.5, total_steps=50)
    restore_object(s2, tree)
    assert s2.state_dict() == s.state_dict()
    assert s2.get_last_lr() == s.get_last_lr()


def test_bf16_module_roundtrip():
    torch.manual_seed(0)
    m = MLP().to(torch.bfloat16)
    tree = _serialize(capture_object(m))
    assert tree["state_dict"]["net.0.weight"].dtype == torch.bfloat16
    torch.manual_seed(1)
    fresh = MLP().to(torch.bfloat16)
    assert parameters_digest(fresh) != parameters_digest(m)
    restore_object(fresh, tree)
    assert _param_bytes(fresh) == _param_bytes(m)
    assert parameters_digest(fresh) == parameters_digest(m)
    for (_, a), (_, b) in zip(fresh.named_parameters(), m.named_parameters(), strict=True):
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))
    err = _mismatch(MLP(), tree)  # float32 model
    assert any("recorded dtype torch.bfloat16, got torch.float32" in x for x in err.mismatches)


def test_tensor_digest():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    d = tensor_digest(t)
    assert len(d) == 16
    assert tensor_digest(t.clone()) == d
    assert tensor_digest(t.t().contiguous().t()) == d  # same values, other strides
    u = t.clone()
    u.view(torch.int32)[1, 1] ^= 1  # flip the lowest mantissa bit
    assert tensor_digest(u) != d
    b = t.to(torch.bfloat16)
    assert tensor_digest(b) == tensor_digest(b.clone())
    assert tensor_digest(torch.tensor(1.5)) != tensor_digest(torch.tensor(2.5))
    assert tensor_digest(torch.zeros(0)) == tensor_digest(torch.zeros(0, dtype=torch.int64))


def test_parameters_digest_tracks_training():
    a = Run(0, scaler=False)
    before = parameters_digest(a.model)
    a.step()
    assert parameters_digest(a.model) != before


def test_first_nonfinite():
    assert first_nonfinite(capture_object(MLP())) is None
    t = torch.zeros(3, 4)
    t[1, 2] = float("nan")
    t[2, 0] = float("inf")
    tree = {"a": {"ok": torch.ones(2), "ints": torch.tensor([1, 2])}, "b": [np.zeros(2), t]}
    path, index, value = first_nonfinite(tree)
    assert path == "/b/1" and index == (1, 2) and np.isnan(value)
    arr = np.ones((2, 2), dtype=np.float16)
    arr[1, 0] = -np.inf
    assert first_nonfinite({"x": arr}) == ("/x", (1, 0), -np.inf)
    assert first_nonfinite({"s": float("inf")}) == ("/s", (), float("inf"))
    bf = torch.ones(5, dtype=torch.bfloat16)
    bf[3] = float("inf")
    assert first_nonfinite(bf) == ("/", (3,), float("inf"))
    assert first_nonfinite({"n": None, "i": 3, "s": "x", "e": np.zeros(0)}) is None


def test_numpy_array_and_dict_of_arrays_in_place():
    arr = np.arange(6, dtype=np.int16).reshape(2, 3)
    tree = capture_object(arr)
    arr[...] = 0
    restore_object(arr, tree)
    assert arr.tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(StateMismatchError, match="int32"):
        restore_object(arr, tree.astype(np.int32))
    with pytest.raises(StateMismatchError, match=r"\(3, 2\)"):
        restore_object(arr, tree.reshape(3, 2))
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(RestoreError, match="read-only"):
        restore_object(ro, np.ones(3))

    d = {"obs": np.zeros((4, 2), np.float32), "n": np.zeros((), np.int64)}
    d["obs"][1, 1] = 3.5
    d["n"][()] = 7
    obs_id = id(d["obs"])
    saved = capture_object(d)
    d["obs"][...] = -1
    d["n"][()] = 0
    restore_object(d, saved)
    assert id(d["obs"]) == obs_id and d["obs"][1, 1] == 3.5 and int(d["n"]) == 7
    bad = dict(saved, n=np.zeros((), np.int32))
    d["obs"][...] = -1
    err = _mismatch(d, bad)
    assert err.mismatches[0] == "n: recorded ndarray int32 (), got ndarray int64 ()"
    assert (d["obs"] == -1).all()  # all or nothing
    err = _mismatch(d, {"obs": saved["obs"]})
    assert "key 'n': missing in snapshot" in err.mismatches


def test_tensor_in_place():
    t = torch.arange(4.0, requires_grad=True)
    tree = capture_object(t)
    with torch.no_grad():
        t.zero_()
    restore_object(t, tree)
    assert t.tolist() == [0.0, 1.0, 2.0, 3.0] and t.requires_grad
    with pytest.raises(StateMismatchError):
        restore_object(t, tree.double())


class ReplayBuffer:
    def __init__(self) -> None:
        self.items = np.zeros((5, 2))
        self.pos = 0

    def __replaykit_state__(self) -> dict[str, Any]:
        return {"items": self.items, "pos": self.pos}  # capture copies the arrays

    def __replaykit_restore__(self, tree: dict[str, Any]) -> None:
        self.items[...] = tree["items"]
        self.pos = tree["pos"]


def test_user_protocol():
    rb = ReplayBuffer()
    rb.items[2] = 9
    rb.pos = 3
    tree = capture_object(rb)
    rb.items[2] = 0  # capture must not alias
    assert tree["items"][2, 0] == 9
    fresh = ReplayBuffer()
    restore_object(fresh, _serialize(tree))
    assert fresh.pos == 3 and fresh.items[2, 1] == 9


def test_duck_typed_state_dict_object():
    class Normalizer:
        def __init__(self) -> None:
            self.mean = np.zeros(3)
            self.count = 0

        def state_dict(self) -> dict[str, Any]:
            return {"mean": self.mean, "count": self.count}

        def load_state_dict(self, sd: dict[str, Any]) -> None:
            self.mean = sd["mean"]
            self.count = sd["count"]

    n = Normalizer()
    n.mean[:] = [1.0, 2.0, 3.0]
    n.count = 4
    tree = capture_object(n)
    n.mean[0] = 100.0
    fresh = Normalizer()
    restore_object(fresh, tree)
    assert fresh.mean.tolist() == [1.0, 2.0, 3.0] and fresh.count == 4
    fresh.mean[1] = -1.0  # restore handed over a copy, not the snapshot's own array
    assert tree["state_dict"]["mean"][1] == 2.0
    bad = copy.deepcopy(tree)
    del bad["state_dict"]["count"]
    with pytest.raises(StateMismatchError, match="count"):
        restore_object(fresh, bad)


def test_unsupported_objects_raise_capture_error():
    class Opaque:
        pass

    with pytest.raises(CaptureError, match="register_state_type") as info:
        capture_object(Opaque())
    assert "Opaque" in str(info.value)
    with pytest.raises(CaptureError, match="__replaykit_state__"):
        restore_object(Opaque(), {})
    with pytest.raises(CaptureError, match="object-dtype"):
        capture_object(np.array([None, 1], dtype=object))
    with pytest.raises(CaptureError, match=r"builtins\.function"):
        capture_object({"a": np.zeros(2), "f": lambda: 0})


def test_register_state_type():
    class Counter:
        def __init__(self) -> None:
            self.n = 0

    def restore(c: Counter, tree: Any) -> None:
        c.n = tree["n"]

    register_state_type(Counter, lambda c: {"n": c.n}, restore)
    c = Counter()
    c.n = 5
    tree = capture_object({"c": c})
    other = {"c": Counter()}
    restore_object(other, tree)
    assert other["c"].n == 5


def test_capture_refuses_bad_extra_state():
    class WithExtra(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def get_extra_state(self) -> Any:
            return {"note": object()}

        def set_extra_state(self, state: Any) -> None:
            pass

    with pytest.raises(CaptureError, match="_extra_state"):
        capture_object(WithExtra())


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("capturable", [False, True])
def test_cuda_resume_bit_identical_and_devices_kept(capturable):
    def build(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, torch.Generator]:
        torch.manual_seed(seed)
        m = MLP().cuda()
        o = torch.optim.Adam(m.parameters(), lr=1e-2, capturable=capturable)
        return m, o, torch.Generator(device="cuda").manual_seed(seed)

    def run(m: nn.Module, o: torch.optim.Optimizer, g: torch.Generator, n: int) -> list[Any]:
        out = []
        for _ in range(n):
            x = torch.randn(16, 4, generator=g, device="cuda")
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
            out.append(_param_bytes(m))
        return out

    m, o, g = build(0)
    run(m, o, g, 4)
    snap = _serialize(
        {
            "m": capture_object(m),
            "o": capture_object(o),
            "g": capture_generator(g),
            "rng": capture_global_rngs(),
        }
    )
    expected = run(m, o, g, 5)
    m2, o2, g2 = build(9)
    restore_object(m2, snap["m"])
    restore_object(o2, snap["o"])
    restore_generator(g2, snap["g"])
    restore_rngs(snap["rng"])
    assert all(p.is_cuda for p in m2.parameters())
    step = o2.state[m2.net[0].weight]["step"]
    assert step.is_cuda == capturable
    assert run(m2, o2, g2, 5) == expected
