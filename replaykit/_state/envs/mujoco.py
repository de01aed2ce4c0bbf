"""Env adapter for Gymnasium's MuJoCo envs (``gymnasium.envs.mujoco.MujocoEnv``).

The snapshot has three parts, because the next ``step`` of a MuJoCo env reads
three kinds of state:

1. **The integration state**, read with MuJoCo's own state API
   (``mj_getState(..., mjSTATE_INTEGRATION)``): time, ``qpos``, ``qvel``,
   ``act``, the actuator history buffer, plastic state, ``qacc_warmstart``,
   plugin state, ``ctrl``, applied forces, ``eq_active``, mocap poses and
   ``userdata``. ``qpos``/``qvel`` alone are *not* enough: the constraint
   solver starts from ``qacc_warmstart``, so envs with contacts or joint limits
   (Hopper, Walker2d, Ant, Humanoid, InvertedPendulum, ...) diverge on their
   very first step when only ``qpos``/``qvel`` are restored.
2. **State carried across steps that mjtState leaves out** in MuJoCo 4:
   the sleep cycle ``tree_asleep`` and the IPC flex contact multipliers.
3. **Derived quantities**, copied exactly. After ``mj_step`` the kinematic
   arrays (``xpos``, ``xipos``, ``cfrc_ext``, ...) describe the state at the
   start of the last substep, not the current ``qpos``. Python env code reads
   them *before* stepping: Ant's reward uses ``xpos`` of the torso and
   Humanoid's uses ``xipos`` (its centre of mass) from before ``mj_step``.
   Recomputing them with ``mj_forward`` gives the current-``qpos`` values and a
   different reward on the first step, so the stale values are restored
   verbatim.

Per-step scratch buffers whose size changes from step to step (contacts,
``efc_*`` constraint rows, islands) are recomputed with ``mj_forward`` on
restore; ``mj_step`` rebuilds them before using them, and no Gymnasium env
reads them between steps.

The env's ``np_random`` (used by ``reset_model``) is captured too.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from replaykit._state.envs.registry import register_env_adapter
from replaykit.errors import StateMismatchError

try:
    import mujoco
    from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
except ImportError:  # the mujoco extra is not installed: register nothing
    _AVAILABLE = False
else:
    _AVAILABLE = True

__all__ = ["MujocoEnvAdapter", "register"]

# State carried from one step to the next that mj_getState does not return
# (MuJoCo 4: sleep bookkeeping and IPC flex contact state). Names missing from
# the installed MuJoCo are skipped.
_CARRIED_FIELDS: tuple[str, ...] = ("tree_asleep", "flexvert_lambda", "flexvert_conage")

# Derived arrays with a fixed, model-determined size, in the order mjData
# lists them. Python env code may read any of these between steps, and after
# mj_step they hold values mj_forward would not reproduce (see module doc).
_DERIVED_FIELDS: tuple[str, ...] = (
    # position dependent
    "xpos",
    "xquat",
    "xmat",
    "xipos",
    "xiquat",
    "ximat",
    "xanchor",
    "xaxis",
    "geom_xpos",
    "geom_xquat",
    "geom_xmat",
    "site_xpos",
    "site_xquat",
    "site_xmat",
    "cam_xpos",
    "cam_xmat",
    "light_xpos",
    "light_xdir",
    "subtree_com",
    "cdof",
    "cinert",
    "flexvert_xpos",
    "flexedge_length",
    "ten_length",
    "wrap_obj",
    "wrap_xpos",
    "ten_wrapadr",
    "ten_wrapnum",
    "actuator_length",
    "actuator_moment",
    "crb",
    "M",
    "qLD",
    "qLDiagInv",
    "tree_awake",
    "body_awake",
    # position and velocity dependent
    "flexedge_velocity",
    "ten_velocity",
    "actuator_velocity",
    "cvel",
    "cdof_dot",
    "qfrc_bias",
    "qfrc_spring",
    "qfrc_damper",
    "qfrc_gravcomp",
    "qfrc_fluid",
    "qfrc_adhesion",
    "qfrc_passive",
    "subtree_linvel",
    "subtree_angmom",
    # control and acceleration dependent
    "qacc",
    "act_dot",
    "actuator_force",
    "qfrc_actuator",
    "qfrc_smooth",
    "qacc_smooth",
    "qfrc_constraint",
    "qfrc_inverse",
    "cacc",
    "cfrc_int",
    "cfrc_ext",
    "sensordata",
    "energy",
)

# Flags that tell MuJoCo which lazily evaluated stages are already current.
_FLAG_FIELDS: tuple[str, ...] = (
    "flg_energypos",
    "flg_energyvel",
    "flg_subtreevel",
    "flg_rnepost",
)

# Model sizes recorded with the snapshot so a snapshot from another model is
# refused with a readable message instead of a shape error deep in MuJoCo.
_MODEL_SIZES: tuple[str, ...] = (
    "nq",
    "nv",
    "nu",
    "na",
    "nbody",
    "njnt",
    "ngeom",
    "nsite",
    "nmocap",
    "neq",
    "nuserdata",
    "nsensordata",
    "ntendon",
)


def _capture_np_random(env: Any) -> dict[str, Any]:
    # bit_generator.state is a dict of JSON scalars (ints of any size) and, for
    # some generators, numpy arrays; copy arrays so nothing is shared.
    state = env.np_random.bit_generator.state
    copied: dict[str, Any] = _copy_tree(state)
    return copied


def _copy_tree(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _copy_tree(v) for k, v in tree.items()}
    if isinstance(tree, np.ndarray):
        return tree.copy()
    return tree


def _restore_np_random(env: Any, state: dict[str, Any], what: str) -> None:
    bit_generator = env.np_random.bit_generator
    saved = state.get("bit_generator")
    live = type(bit_generator).__name__
    if saved != live:
        raise StateMismatchError(
            what, [f"np_random bit generator: snapshot has {saved!r}, env has {live!r}"]
        )
    bit_generator.state = _copy_tree(state)


def _model_sizes(model: Any) -> dict[str, int]:
    return {name: int(getattr(model, name)) for name in _MODEL_SIZES if hasattr(model, name)}


class MujocoEnvAdapter:
    """Captures and restores the complete state of a Gymnasium ``MujocoEnv``.

    Example:
        >>> import gymnasium as gym
        >>> from replaykit._state.envs.mujoco import MujocoEnvAdapter
        >>> env = gym.make("Hopper-v5")
        >>> _ = env.reset(seed=0)
        >>> state = MujocoEnvAdapter().capture(env.unwrapped)
        >>> fresh = gym.make("Hopper-v5")
        >>> _ = fresh.reset(seed=1)
        >>> MujocoEnvAdapter().restore(fresh.unwrapped, state)
    """

    name: ClassVar[str] = "mujoco.MujocoEnv"

    def capture(self, env: Any) -> dict[str, Any]:
        """Return the env's integration state, carried state, derived arrays and RNG."""
        model, data = env.model, env.data
        signature = int(mujoco.mjtState.mjSTATE_INTEGRATION)
        integration = np.empty(mujoco.mj_stateSize(model, signature), dtype=np.float64)
        mujoco.mj_getState(model, data, integration, signature)
        return {
            "model_sizes": _model_sizes(model),
            "signature": signature,
            "integration": integration,
            "carried": {
                name: np.array(getattr(data, name), copy=True)
                for name in _CARRIED_FIELDS
                if hasattr(data, name)
            },
            "derived": {
                name: np.array(getattr(data, name), copy=True)
                for name in _DERIVED_FIELDS
                if hasattr(data, name)
            },
            "flags": {
                name: bool(getattr(data, name)) for name in _FLAG_FIELDS if hasattr(data, name)
            },
            "np_random": _capture_np_random(env),
        }

    def restore(self, env: Any, state: dict[str, Any]) -> None:
        """Put ``env`` into the captured state; its next ``step`` is bit-identical.

        Raises:
            StateMismatchError: the snapshot was taken from a different model,
                or the installed MuJoCo lays the state out differently.
        """
        what = f"MuJoCo env {type(env).__name__}"
        model, data = env.model, env.data
        self._check(model, data, state, what)
        signature = int(state["signature"])
        integration = np.ascontiguousarray(state["integration"], dtype=np.float64)
        mujoco.mj_setState(model, data, integration, signature)
        # Rebuild the variable-size scratch buffers (contacts, constraint rows)
        # for this qpos, so nothing from the env's previous life survives.
        mujoco.mj_forward(model, data)
        # mj_forward only writes derived fields, but set the state again so the
        # result never depends on that detail of the MuJoCo version.
        mujoco.mj_setState(model, data, integration, signature)
        for group in ("carried", "derived"):
            for name, value in state[group].items():
                getattr(data, name)[...] = value
        for name, value in state["flags"].items():
            setattr(data, name, value)
        _restore_np_random(env, state["np_random"], what)

    @staticmethod
    def _check(model: Any, data: Any, state: Any, what: str) -> None:
        if not isinstance(state, dict) or not {
            "model_sizes",
            "signature",
            "integration",
            "carried",
            "derived",
            "flags",
            "np_random",
        } <= set(state):
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise StateMismatchError(what, [f"expected a MuJoCo env snapshot, found {found}"])
        problems: list[str] = []
        live_sizes = _model_sizes(model)
        for name, saved in state["model_sizes"].items():
            live = live_sizes.get(name)
            if live != saved:
                problems.append(f"model.{name}: snapshot has {saved}, env has {live}")
        signature = int(state["signature"])
        expected = mujoco.mj_stateSize(model, signature)
        found_size = np.shape(state["integration"])
        if found_size != (expected,):
            problems.append(
                f"integration state: snapshot has shape {found_size}, "
                f"this model and MuJoCo need ({expected},)"
            )
        for group in ("carried", "derived"):
            for name, value in state[group].items():
                if not hasattr(data, name):
                    problems.append(f"data.{name}: in the snapshot, missing in this MuJoCo")
                    continue
                live_arr = getattr(data, name)
                if live_arr.shape != value.shape or live_arr.dtype != value.dtype:
                    problems.append(
                        f"data.{name}: snapshot has {value.dtype}{list(value.shape)}, "
                        f"env has {live_arr.dtype}{list(live_arr.shape)}"
                    )
        for name in state["flags"]:
            if not hasattr(data, name):
                problems.append(f"data.{name}: in the snapshot, missing in this MuJoCo")
        if problems:
            raise StateMismatchError(what, problems)


def register() -> None:
    """Register the MuJoCo adapter; does nothing when MuJoCo is not installed."""
    if not _AVAILABLE:
        return
    register_env_adapter(MujocoEnv, MujocoEnvAdapter())
