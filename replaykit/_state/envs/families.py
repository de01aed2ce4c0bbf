"""Every env family replaykit knows, in one table: the only place a family's facts are spelled.

A *family* is a group of envs that one package provides and one adapter module covers
(MuJoCo, Atari, ...). Per family the table says:

* which module registers its state adapters, and when: at the first use of the adapter
  registry (``trigger=None``), or once the caller has imported the family's own trigger
  module (so ``import replaykit`` never imports mujoco or ale_py);
* which env-id namespaces it registers with gymnasium, and the package to import for each
  (``"ALE"`` -> ``ale_py``), so a recorded id can be rebuilt. A fixed table in code: a
  package name never comes from a file, only the namespace it is looked up by;
* the ``pip`` extra that installs it and the distributions whose versions go into a
  recording's provenance;
* the unwrapped env classes whose simulator state outlives ``reset()``, for which
  replay-from-reset must start at the recording's first reset.

This module imports nothing beyond the standard library, so provenance and the session
code read it without loading gymnasium. The accessors below are how other modules read it.

Example:
    >>> package_for_namespace("ALE")
    'ale_py'
    >>> [f.name for f in FAMILIES if f.extra == "box2d"]
    ['box2d']
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "BUILTIN_ADAPTER_MODULES",
    "FAMILIES",
    "EnvFamily",
    "distributions",
    "eager_adapter_modules",
    "family_for_namespace",
    "lazy_adapter_modules",
    "namespace_packages",
    "package_for_namespace",
    "state_outlives_reset",
]


@dataclass(frozen=True)
class EnvFamily:
    """What replaykit knows about one env family.

    Attributes:
        name: short name, e.g. ``"mujoco"``.
        adapter_module: the module holding the family's adapters, or ``None`` when it has
            none (its envs replay from reset, or register their own adapters).
        trigger: the adapters register once this module is in ``sys.modules`` (the caller
            built such an env); ``None``: at the first use of the adapter registry. A
            triggered adapter module exposes ``register()``; an untriggered one registers
            on import.
        namespaces: env-id namespace -> the package whose import registers its ids.
        extra: the ``pip install 'replaykit[EXTRA]'`` extra that installs the family.
        distributions: distribution names whose versions are recorded as provenance.
        state_outlives_reset: ``module.qualname`` of unwrapped env classes whose state
            carries over from one episode to the next.
    """

    name: str
    adapter_module: str | None = None
    trigger: str | None = None
    namespaces: Mapping[str, str] = field(default_factory=dict)
    extra: str | None = None
    distributions: tuple[str, ...] = ()
    state_outlives_reset: frozenset[str] = frozenset()


FAMILIES: tuple[EnvFamily, ...] = (
    EnvFamily(
        "classic_control",  # gymnasium's classic-control and toy-text envs
        adapter_module="replaykit._state.envs.classic_control",
        distributions=("gymnasium",),
    ),
    EnvFamily(
        "mujoco",
        adapter_module="replaykit._state.envs.mujoco",
        trigger="gymnasium.envs.mujoco.mujoco_env",
        extra="mujoco",
        distributions=("mujoco",),
    ),
    EnvFamily(
        "atari",
        adapter_module="replaykit._state.envs.atari",
        trigger="ale_py.env",
        namespaces={"ALE": "ale_py"},
        extra="atari",
        distributions=("ale-py",),
    ),
    # Box2D envs have no adapter: they replay from reset. BipedalWalker and CarRacing create
    # their b2World once in __init__ and only destroy and re-create bodies on reset, so the
    # world's broad-phase tree and contact order carry every earlier episode's history into
    # the next one (measured: BipedalWalker diverges in episode 3 when replayed from that
    # episode's reset).
    EnvFamily(
        "box2d",
        extra="box2d",
        distributions=("box2d",),
        state_outlives_reset=frozenset(
            {
                "gymnasium.envs.box2d.bipedal_walker.BipedalWalker",
                "gymnasium.envs.box2d.car_racing.CarRacing",
            }
        ),
    ),
    # replaykit's own test envs: their package registers its ids and its adapters (through
    # the public API, as a user's env package would).
    EnvFamily("replaykit_envs", namespaces={"replaykit": "replaykit_envs"}),
)

#: Adapter modules for what is not an env family: gymnasium's stock wrappers. They
#: register, with the untriggered families, at the first use of the adapter registry.
BUILTIN_ADAPTER_MODULES: tuple[str, ...] = ("replaykit._state.envs.wrappers",)


def eager_adapter_modules() -> tuple[str, ...]:
    """Return the adapter modules imported when the registry is first used."""
    families = tuple(f.adapter_module for f in FAMILIES if f.adapter_module and not f.trigger)
    return families + BUILTIN_ADAPTER_MODULES


def lazy_adapter_modules() -> dict[str, str]:
    """Map each trigger module to the adapter module to ``register()`` once it is imported."""
    return {f.trigger: f.adapter_module for f in FAMILIES if f.trigger and f.adapter_module}


def namespace_packages() -> dict[str, str]:
    """Map each env-id namespace to the package whose import registers its ids."""
    return {ns: pkg for f in FAMILIES for ns, pkg in f.namespaces.items()}


def package_for_namespace(namespace: str) -> str | None:
    """Return the package that registers env ids ``namespace/...`` (``None``: unknown)."""
    return namespace_packages().get(namespace)


def family_for_namespace(namespace: str) -> EnvFamily | None:
    """Return the family whose package registers env ids ``namespace/...`` (``None``: unknown)."""
    return next((f for f in FAMILIES if namespace in f.namespaces), None)


def distributions() -> tuple[str, ...]:
    """Return the distribution names of every family, in table order, for provenance."""
    seen: dict[str, None] = {}
    for f in FAMILIES:
        seen.update(dict.fromkeys(f.distributions))
    return tuple(seen)


def state_outlives_reset() -> frozenset[str]:
    """Return ``module.qualname`` of every unwrapped env class whose state outlives reset."""
    return frozenset().union(*(f.state_outlives_reset for f in FAMILIES))
