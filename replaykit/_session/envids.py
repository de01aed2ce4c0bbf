"""Env-id checks cheap enough to run before any heavy import (the CLI's first look at an id)."""

from __future__ import annotations

from replaykit.errors import UsageError

__all__ = ["precheck_env_id", "unknown_env_id"]


def unknown_env_id(env_id: str, why: str) -> UsageError:
    """Return the one-line error for an env id gymnasium does not know."""
    return UsageError(
        f"unknown env id {env_id!r} ({why}); pass a registered id such as "
        "CartPole-v1 (list them: python -c 'import gymnasium; gymnasium.pprint_registry()')"
    )


def precheck_env_id(env_id: str) -> None:
    """Refuse an env id gymnasium does not know, importing gymnasium only.

    Ids in a namespace whose package replaykit imports itself (``ALE/...``) pass: that
    package registers them, and building the env checks them then.

    Raises:
        UsageError: the id is not registered.

    Example:
        >>> precheck_env_id("CartPole-v1")
    """
    import gymnasium as gym

    from replaykit._state.envs import families

    if env_id in gym.registry:
        return
    if "/" in env_id and env_id.split("/", 1)[0] in families.namespace_packages():
        return
    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise unknown_env_id(env_id, why) from None
