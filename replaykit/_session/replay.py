"""Restore a snapshot into fresh objects, step on, and verify against the recording.

Example:
    >>> # rep = restore("run.h5", env=gym.make("CartPole-v1"), track={"model": model})
    >>> # obs = rep.obs
    >>> # for _ in range(100):
    >>> #     obs, r, term, trunc, info = rep.env.step(policy(obs))   # raises DivergenceError
    >>> # rep.close()
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from replaykit._analysis.compare import EXACT, Mismatch, Rule, Rules
from replaykit._format import layout as F
from replaykit._format.store import Recording, SnapshotInfo
from replaykit._session.envkwargs import vet_env_kwargs
from replaykit._session.recorder import env_spec_json, flat_info
from replaykit._session.verifier import (
    DEFAULT_IGNORE,
    ReplayCore,
    Rows,
    as_rules,
    leaf_values,
    restoring,
    space_problems,
)
from replaykit._state import snapshot
from replaykit._state import spaces as _spaces
from replaykit._state.envs import families
from replaykit.errors import (
    NondeterministicEnvError,
    ProvenanceError,
    RestoreError,
    StateMismatchError,
    UsageError,
)

__all__ = ["DEFAULT_IGNORE", "Replay", "VerifyingWrapper", "make_env", "restore"]


# Env-id namespaces whose registering package replaykit imports itself. A fixed table in
# code: the package name never comes from a file, only the namespace it is looked up by.
_NAMESPACE_PACKAGES: dict[str, str] = families.namespace_packages()


def register_env_namespace(env_id: str) -> None:
    """Import the package that registers ``env_id``'s namespace, when it is a known one.

    Only the namespaces in a fixed table are handled (``"ALE"`` -> ``ale_py``);
    any other id is left as it is.

    Raises:
        UsageError: the id's namespace is known but its package is not installed.
    """
    if env_id in gym.registry or "/" not in env_id:
        return
    namespace = env_id.split("/", 1)[0]
    package = _NAMESPACE_PACKAGES.get(namespace)
    if package is None:
        return
    import importlib

    try:
        module = importlib.import_module(package)
    except ImportError:
        family = families.family_for_namespace(namespace)
        extra = family.extra if family is not None and family.extra else "all-envs"
        raise UsageError(
            f"env id {env_id!r} is registered by the {package} package, which is not "
            f'installed; install it: pip install "replaykit[{extra}]"'
        ) from None
    gym.register_envs(module)


def make_env(
    recording: Recording | str | os.PathLike[str],
    *,
    allow_kwargs: Collection[str] = (),
    **overrides: Any,
) -> gym.Env[Any, Any]:
    """Build the recorded env with ``gymnasium.make`` from its recorded id and kwargs.

    Only ids already registered with gymnasium are accepted: nothing named in
    the file is ever imported. Import the package that registers the env first.
    Recorded kwargs are used only when they are plain data (see
    :func:`~replaykit._session.envkwargs.vet_env_kwargs`): one that names a file, a
    module or a display is refused unless you pass its value yourself (``overrides``)
    or name it in ``allow_kwargs``.

    Args:
        recording: the recording (or its path).
        allow_kwargs: recorded kwarg names to use as recorded without checks.
        **overrides: kwargs that replace the recorded ones (trusted: they are your code).

    Raises:
        UsageError: the env id is missing, names a module, or is not registered.
        UnsafeFileError: a recorded kwarg is not plain data and was not allowed.
    """
    rec = recording if isinstance(recording, Recording) else Recording(recording)
    try:
        spec = rec.meta.get(F.META_ENV_SPEC) or {}
        env_id = spec.get(F.SPEC_ID) or rec.meta.get(F.META_ENV_ID)
        if not isinstance(env_id, str) or not env_id:
            raise UsageError(f"{rec.path} records no env id; build the env yourself")
        if ":" in env_id:
            raise UsageError(
                f"recorded env id {env_id!r} names a module to import; replaykit never imports "
                "names from a file: import that module yourself and pass the env"
            )
        register_env_namespace(env_id)
        if env_id not in gym.registry:
            raise UsageError(
                f"env id {env_id!r} is not registered with gymnasium; import the package that "
                "registers it (e.g. ale_py, replaykit_envs) or install its extra"
            )
        recorded = {
            k: v
            for k, v in (spec.get(F.SPEC_KWARGS) or {}).items()
            if (not isinstance(v, dict) or F.REPR_TAG not in v) and k not in overrides
        }
        kwargs = vet_env_kwargs(env_id, recorded, allow_kwargs)
        kwargs.update(overrides)
        max_steps = spec.get(F.SPEC_MAX_EPISODE_STEPS)
        if max_steps is not None and "max_episode_steps" not in kwargs:
            kwargs["max_episode_steps"] = max_steps
        return gym.make(env_id, **kwargs)
    finally:
        if rec is not recording:
            rec.close()


class VerifyingWrapper(gym.Wrapper[Any, Any, Any, Any]):
    """Steps the restored env and checks every step against the recording.

    Raises :class:`~replaykit.errors.DivergenceError` at the first probe,
    action, observation, reward, flag or info that differs.
    """

    _replaykit_transparent = True

    def __init__(self, env: gym.Env[Any, Any], replay: Replay) -> None:
        super().__init__(env)
        self._r = replay

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        __tracebackhide__ = True
        return self._r._reset(self.env, seed, options)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        __tracebackhide__ = True
        return self._r._step(self.env, action)


class Replay(ReplayCore):
    """A restored snapshot, ready to step on under verification.

    Built by :func:`restore`; keyword ``options`` go to
    :class:`~replaykit._session.verifier.ReplayCore` (``extra``, ``error``, ``note``).

    Attributes:
        env: the env to step (a :class:`VerifyingWrapper` around yours).
        obs: the observation at the snapshot (what your loop would hold next).
        info: the info that came with it.
        snapshot: which snapshot was restored.
        step_count: the global step index of the next step.
        update_count: the index of the next training update.
        needs_reset: ``True`` when the recorded episode had just ended at the snapshot.
    """

    def __init__(
        self,
        rec: Recording,
        snap: SnapshotInfo,
        env: gym.Env[Any, Any],
        position: Mapping[str, Any],
        rules: Rules,
        ignore: Iterable[str],
        owns: bool,
        **options: Any,
    ) -> None:
        super().__init__(rec, snap, position, owns, rules=rules, ignore=ignore, **options)
        self.episode = int(position[F.SNAP_EPISODE])
        self.step_in_episode = int(position[F.SNAP_STEP_IN_EPISODE])
        self.needs_reset = bool(position[F.SNAP_NEEDS_RESET])
        self._obs_space = env.observation_space
        self._act_space = env.action_space
        self._obs_leaves = _spaces.leaves_of(env.observation_space, "observation")
        self._act_leaves = _spaces.leaves_of(env.action_space, "action")
        self._probes: dict[str, Any] = {}
        self.check_policy = True
        self.env = VerifyingWrapper(env, self)
        self.obs: Any = None
        self.info: dict[str, Any] = {}
        if self.episode >= 0:
            self.obs, self.info = self._current_obs()

    # -------------------------------------------------------------- recorded values
    def _current_obs(self) -> tuple[Any, dict[str, Any]]:
        if self.step_in_episode == 0:
            return self._recorded_obs(self._resets, self.episode), {}
        return self._recorded_obs(self._steps_rows(), self.step_count - 1), {}

    def _recorded_obs(self, rows: Rows, i: int) -> Any:
        return self._recorded(rows, F.OBS, self._obs_leaves, self._obs_space, i)

    def recorded_action(self, i: int) -> Any:
        """Return the action recorded at global step ``i``."""
        return self._recorded(self._steps_rows(), F.ACTION, self._act_leaves, self._act_space, i)

    # -------------------------------------------------------------- user API
    def probe(self, name: str, value: Any) -> None:
        """Give a probe for the next step; it is checked when the step is taken."""
        __tracebackhide__ = True
        if name in self._probes:
            raise UsageError(f"probe {name!r} given twice before one step")
        self._probes[name] = value

    # -------------------------------------------------------------- stepping
    def _where(self) -> dict[str, Any]:
        return {
            "stream": F.STEPS,
            "row": self.step_count,
            "episode": self.episode,
            "k": self.step_in_episode,
        }

    def _step(
        self, env: gym.Env[Any, Any], action: Any
    ) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        __tracebackhide__ = True
        rows = self._next_step_rows()
        t = self.step_count
        if self.needs_reset:
            self._v.fail(
                "reset",
                Mismatch("missing"),
                EXACT,
                **self._where(),
                note="the recorded episode ended here and the next call was reset()",
            )
        st = rows.stream
        # Probes come before the action in the user's loop, so they are compared first.
        # Replay-from-reset feeds recorded actions with no policy running: no probes to check.
        for col in st.columns if self.check_policy else ():
            if col.startswith(F.PROBE + "/"):
                name = col[len(F.PROBE) + 1 :]
                expected, present = rows.get(col, t)
                if name in self._probes:
                    if not present:
                        self._v.fail(f"probe/{name}", Mismatch("extra"), EXACT, **self._where())
                    self._v.check(
                        f"probe/{name}",
                        expected,
                        self._probes[name],
                        logical=st.logical_dtype(col),
                        **self._where(),
                    )
                elif present and not self._v.ignored(f"probe/{name}"):
                    self._v.fail(
                        f"probe/{name}",
                        Mismatch("missing"),
                        EXACT,
                        **self._where(),
                        note="the recording logged this probe before this step",
                    )
        for name in self._probes:
            if F.column_path(F.PROBE, name) not in st.columns:
                self._v.fail(f"probe/{name}", Mismatch("extra"), EXACT, **self._where())
        self._probes.clear()
        self._check_leaves(rows, t, F.ACTION, leaf_values(self._act_leaves, action), self._where())
        obs, reward, terminated, truncated, info = env.step(action)
        self._check_result(t, obs, reward, terminated, truncated, info)
        self.step_count += 1
        self.step_in_episode += 1
        self.verified_steps += 1
        self.needs_reset = bool(terminated or truncated)
        self.obs, self.info = obs, info
        return obs, reward, terminated, truncated, info

    def _check_result(
        self, t: int, obs: Any, reward: Any, terminated: Any, truncated: Any, info: Any
    ) -> None:
        """Check what step ``t`` returned against the recording; raises at the first difference."""
        __tracebackhide__ = True
        rows = self._steps_rows()
        where = self._where()
        self._check_leaves(rows, t, F.OBS, leaf_values(self._obs_leaves, obs), where)
        rexp, _ = rows.get(F.REWARD, t)
        self._v.check(F.REWARD, rexp, _python_reward(reward, rexp.dtype), **where)
        self._v.check(F.TERMINATED, rows.get(F.TERMINATED, t)[0], np.bool_(terminated), **where)
        self._v.check(F.TRUNCATED, rows.get(F.TRUNCATED, t)[0], np.bool_(truncated), **where)
        self._check_info(rows, t, dict(flat_info(info)), "info", where)

    def _reset(
        self, env: gym.Env[Any, Any], seed: int | None, options: dict[str, Any] | None
    ) -> tuple[Any, dict[str, Any]]:
        __tracebackhide__ = True
        e = self.episode + 1
        where: dict[str, Any] = {"stream": F.RESETS, "row": e, "episode": e, "k": 0}
        got = np.int64(-1 if seed is None else seed)
        self._check_reset(e, "episodes", got, np.bool_(seed is not None), where)
        obs, info = env.reset(seed=seed, options=options)
        values = leaf_values(self._obs_leaves, obs)
        self._check_leaves(self._resets, e, F.OBS, values, where, key_prefix="reset/")
        self._check_info(self._resets, e, dict(flat_info(info)), "reset/info", where)
        self.episode = e
        self.step_in_episode = 0
        self.needs_reset = False
        self.obs, self.info = obs, info
        return obs, info

    def recorded_reset_args(self) -> tuple[int | None, dict[str, Any] | None]:
        """``(seed, options)`` the recording passed to the next reset."""
        rseed, seeded, opts = self._recorded_reset(self.episode + 1)
        return (int(rseed) if bool(seeded) else None), opts


def _check_env(rec: Recording, env: gym.Env[Any, Any]) -> None:
    problems = []
    meta = rec.meta
    live_spec = env_spec_json(env)
    rec_id = meta.get(F.META_ENV_ID)
    if rec_id and live_spec and live_spec[F.SPEC_ID] != rec_id:
        problems.append(f"env id: recorded {rec_id!r}, got {live_spec[F.SPEC_ID]!r}")
    rec_spec = meta.get(F.META_ENV_SPEC) or {}
    if rec_spec and live_spec and rec_spec.get(F.SPEC_KWARGS) != live_spec.get(F.SPEC_KWARGS):
        a, b = rec_spec.get(F.SPEC_KWARGS) or {}, live_spec.get(F.SPEC_KWARGS) or {}
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                problems.append(f"env kwarg {k!r}: recorded {a.get(k)!r}, got {b.get(k)!r}")
    problems += space_problems(rec, env.observation_space, env.action_space)
    if problems:
        raise StateMismatchError("env", problems)


def restore(
    recording: Recording | str | os.PathLike[str],
    snapshot_id: str | int | None = None,
    *,
    env: gym.Env[Any, Any] | None = None,
    track: Mapping[str, Any] | None = None,
    rules: Rules | Mapping[str, Rule] | None = None,
    ignore: Iterable[str] = DEFAULT_IGNORE,
    global_rngs: bool = True,
    on_drift: str = "report",
    verify: bool = True,
    mmap: bool = False,
) -> Replay:
    """Restore a snapshot into freshly built objects and return a verifying :class:`Replay`.

    Args:
        recording: a path or an open :class:`~replaykit._format.store.Recording`.
        snapshot_id: snapshot name, index (``0`` first, ``-1`` last), or ``None`` for the first.
        env: a fresh env built like the recorded one (wrappers included, recorder excluded);
            ``None`` builds it with :func:`make_env`.
        track: ``{name: object}`` built like the recorded tracked objects.
        rules: per-key tolerances; bit-exact by default.
        ignore: fnmatch patterns of keys never compared.
        global_rngs: also restore Python/NumPy/torch global RNG states.
        on_drift: what to do when library versions/device/flags differ from the recording:
            ``"report"`` (only in divergence reports), ``"warn"``, or ``"error"``.
        verify: check file checksums. The structure of a file this process already
            restored from, unchanged since, is not checked again; array data is checksummed
            on every restore.
        mmap: opt in to map the snapshot's large arrays that do not land in a tracked
            module's own tensors (an optimizer's moments, large user arrays) copy-on-write
            from the file instead of reading them: restoring costs little more than the
            model's bytes, and each page is read when first touched. Those arrays'
            checksums are **not** verified, and a file truncated or rewritten while they are
            mapped kills the process when a page is next touched (``SIGBUS``): use it only
            for files nothing else writes. Writes to the restored tensors stay private to
            the process. A file already too short is refused before anything is mapped.

    Large tensors of tracked modules are read from the file straight into the modules' own
    memory (no second copy), checksums verified on the way. If ``restore`` raises (a damaged
    array, objects that do not fit the snapshot), those modules hold undefined values:
    build them again before using them.

    Raises:
        StateMismatchError: the objects do not fit the snapshot (listed differences).
        NondeterministicEnvError: replay-from-reset found the env does not reproduce itself.
    """
    __tracebackhide__ = True
    from replaykit import provenance
    from replaykit._state import envs as envstate

    if on_drift not in ("report", "warn", "error"):
        raise UsageError(f"on_drift must be 'report', 'warn' or 'error', got {on_drift!r}")
    with restoring(recording, verify) as (rec, owns):
        if on_drift != "report":
            diffs = [
                d
                for d in provenance.differences(rec.provenance, provenance.collect(git=False))
                if not d[0].startswith(("git.", "platform.processor"))
            ]
            if diffs:
                text = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:6])
                if on_drift == "error":
                    raise ProvenanceError(
                        f"setup differs from the recording's ({text}); replay on a matching setup "
                        "or pass on_drift='warn'"
                    )
                import warnings

                from replaykit.errors import ReplaykitWarning

                warnings.warn(
                    f"setup differs from the recording's: {text}", ReplaykitWarning, stacklevel=2
                )
        if env is None:
            env = make_env(rec)
        rules_obj = as_rules(rules)
        tracked = dict(track or {})
        # Large model tensors are read straight into the tracked modules' memory.
        info, tree = rec.load_snapshot(
            snapshot_id, targets=snapshot.read_targets(tracked), mmap=mmap
        )
        _check_env(rec, env)
        snapshot.check_tracked_names(tree[F.TREE_TRACKED], tree.get(F.TREE_KINDS) or {}, tracked)
        chain = tree[F.TREE_ENV]
        if chain.get("env") is not None:
            envstate.restore_chain(env, chain)
        else:
            _fast_forward(env, tree, rec, info, rules_obj, ignore)
            envstate.restore_wrappers_and_rngs(env, chain)
        # The tree was just read from the file and is dropped after this: the live objects
        # may take its tensors without a copy.
        snapshot.restore(tree, tracked, global_rngs=global_rngs)
        return Replay(
            rec,
            info,
            env,
            tree[F.TREE_RECORDER],
            rules_obj,
            ignore,
            owns,
            extra=tree.get(F.TREE_EXTRA),
        )


def _fast_forward(
    env: gym.Env[Any, Any],
    tree: Mapping[str, Any],
    rec: Recording,
    info: SnapshotInfo,
    rules: Rules,
    ignore: Iterable[str],
) -> None:
    """Replay-from-reset: re-seed, re-apply the recorded actions, verify each step.

    Starts at the snapshot's episode's reset, or at the recording's first reset for envs
    whose state outlives ``reset()`` (see :func:`replaykit._session.record.replay_scope`). Every
    re-run step is checked (observation, reward, flags, infos) against the recording;
    the policy is not run, so probes are not compared here.
    """
    __tracebackhide__ = True
    from replaykit._state import envs as envstate

    fb = tree.get(F.TREE_FALLBACK) or {}
    scope = fb.get(F.FALLBACK_SCOPE, "episode")
    pos = tree[F.TREE_RECORDER]
    e, t = int(pos[F.SNAP_EPISODE]), int(pos[F.SNAP_STEP])
    first = 0 if scope == "recording" else e
    start_state = fb.get(
        F.FALLBACK_RECORDING_START if scope == "recording" else F.FALLBACK_EPISODE_START
    )
    if start_state is None:
        raise RestoreError(
            f"{rec.path}: snapshot {info.name!r} holds no env state and no {scope}-start state "
            "for replay-from-reset; record it again"
        )
    envstate.restore_wrappers_and_rngs(env, start_state)
    reset_steps = rec.stream(F.RESETS).read(F.RESET_STEP, first, e + 1)
    probe = Replay(
        rec,
        info,
        env,
        {
            F.SNAP_STEP: int(reset_steps[0]),
            F.SNAP_EPISODE: first - 1,
            F.SNAP_STEP_IN_EPISODE: 0,
            F.SNAP_NEEDS_RESET: True,
        },
        rules,
        ignore,
        owns=False,
        error=NondeterministicEnvError,
        note="replay-from-reset: the env did not reproduce its own recording given the same "
        "seed and actions; it is not deterministic (register an env adapter for it)",
    )
    probe._v.hint = None  # no policy or training runs here: update counts say nothing
    ff = _FastForward(probe, env)
    base = env.unwrapped
    # Human rendering draws a window and sleeps to hold the frame rate on every step; none
    # of it feeds the observations (checked below on every step), so skip it while re-running.
    human = getattr(base, "render_mode", None) == "human"
    if human:
        base.render_mode = None
    try:
        for i, ep in enumerate(range(first, e + 1)):
            seed, options = probe.recorded_reset_args()
            probe._reset(env, seed, options)
            stop = t if ep == e else int(reset_steps[i + 1])
            ff.run(stop)
    finally:
        if human:
            base.render_mode = "human"
    live = envstate.capture_wrappers_and_rngs(env).get("env_rng")
    saved = tree[F.TREE_ENV].get("env_rng")
    if live is not None and saved is not None and _rng_repr(live) != _rng_repr(saved):
        probe._v.fail(
            "env_rng",
            Mismatch("value"),
            EXACT,
            stream=F.STEPS,
            row=t,
            episode=e,
            k=probe.step_in_episode,
            note="after replaying the episode's actions the env's RNG state differs from the "
            "snapshot's: the env draws random numbers outside its own np_random",
        )


def _python_reward(reward: Any, recorded: np.dtype) -> Any:
    """Cast a Python-number reward into the reward column's dtype, as the recorder stored it.

    The column takes its dtype from the first step's reward (float64 for a Python number);
    envs such as BipedalWalker return ``np.float32`` rewards but a Python ``-100`` on a fall,
    which the recorder wrote into the float32 column. Compare it the same way.
    """
    if isinstance(reward, (int, float)) and not isinstance(reward, bool):
        cast = recorded.type(reward) if recorded.kind == "f" else np.float64(reward)
        return cast if float(cast) == reward else np.float64(reward)
    return reward


def _same(expected: np.ndarray, actual: Any) -> bool:
    """Bit-identical (dtype, shape and bytes): the fast check; any doubt goes to the full one."""
    if actual.__class__ is not np.ndarray:
        if isinstance(actual, bool):
            actual = np.bool_(actual)
        elif isinstance(actual, float):
            actual = np.float64(actual)
        elif isinstance(actual, int):
            actual = np.int64(actual)
        elif not isinstance(actual, np.generic):
            return False
        actual = np.asarray(actual)
    return bool(
        actual.dtype == expected.dtype
        and actual.shape == expected.shape
        and actual.tobytes() == expected.tobytes()
    )


class _FastForward:
    """Re-applies recorded actions block by block, checking each step with a bit-level fast path.

    Rows are read one block of columns at a time (not row by row), and a step whose every
    recorded value is bit-identical passes without building a report. Anything else goes to
    :meth:`Replay._check_result`, which applies the tolerance rules and ignore patterns and
    raises the full divergence report.
    """

    def __init__(self, probe: Replay, env: gym.Env[Any, Any]) -> None:
        self.p = probe
        self.env = env
        st = probe._steps_rows().stream
        self.stream = st
        self.act = [(leaf.name, F.column_path(F.ACTION, leaf.name)) for leaf in probe._act_leaves]
        self.obs = [
            (_spaces.getter(leaf.path), F.column_path(F.OBS, leaf.name))
            for leaf in probe._obs_leaves
        ]
        self.info_cols = [c for c in st.columns if c.startswith(F.INFO + "/")]
        self.tolerated: dict[str, bool] = {}
        self.block = max(16, min(4096, (16 << 20) // max(1, self._row_bytes())))

    def _row_bytes(self) -> int:
        cols = self.stream.columns
        total = 0
        for name in cols:
            shape = cols[name].get("shape") or []
            total += 8 * int(np.prod(shape)) if shape else 8
        return total

    def _tolerate(self, name: str) -> bool:
        # A live info key the recording lacks passes if it was skipped at record time or ignored.
        ok = self.tolerated.get(name)
        if ok is None:
            ok = name in self.p._skipped_info or self.p._v.ignored(f"info/{name}")
            self.tolerated[name] = ok
        return ok

    def run(self, stop: int) -> None:
        __tracebackhide__ = True
        p, st, env = self.p, self.stream, self.env
        space = p._act_space
        single = len(self.act) == 1 and not self.act[0][0]
        while p.step_count < stop:
            lo = p.step_count
            hi = min(stop, lo + self.block)
            acts = [(name, st.read(col, lo, hi)) for name, col in self.act]
            obs = [(get, st.read(col, lo, hi)) for get, col in self.obs]
            rew = st.read(F.REWARD, lo, hi)
            term = st.read(F.TERMINATED, lo, hi)
            trunc = st.read(F.TRUNCATED, lo, hi)
            infos = [
                (c[len(F.INFO) + 1 :], st.read(c, lo, hi), st.present(c, lo, hi))
                for c in self.info_cols
            ]
            for i in range(hi - lo):
                if single:
                    a = acts[0][1][i]
                    action = a.copy() if a.ndim else a[()]
                else:
                    values = {}
                    for name, data in acts:
                        a = data[i]
                        values[name] = a.copy() if a.ndim else a[()]
                    action = _spaces.unflatten(space, values)
                o, r, te, tr, inf = env.step(action)
                rr = _python_reward(r, rew.dtype)
                ok = (
                    all(_same(data[i], get(o)) for get, data in obs)
                    and _same(rew[i], rr)
                    and bool(term[i]) is bool(te)
                    and bool(trunc[i]) is bool(tr)
                )
                if ok and (inf or infos):
                    live = dict(flat_info(inf)) if inf else {}
                    for name, data, present in infos:
                        here = present is None or bool(present[i])
                        if here != (name in live) or (here and not _same(data[i], live[name])):
                            ok = False
                            break
                    if ok and len(live) > sum(1 for n, _, _ in infos if n in live):
                        names = {n for n, _, _ in infos}
                        ok = all(n in names or self._tolerate(n) for n in live)
                if not ok:
                    p._check_result(lo + i, o, r, te, tr, inf)
                p.step_count += 1
                p.step_in_episode += 1
                p.verified_steps += 1
                p.needs_reset = bool(te or tr)


def _rng_repr(state: Any) -> str:
    return F.dumps(_jsonify(state))


def _jsonify(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonify(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonify(v) for v in x]
    if isinstance(x, np.ndarray):
        return [x.dtype.str, x.tobytes().hex()]
    if isinstance(x, np.generic):
        return x.item()
    return x
