"""Switch torch into deterministic mode, and report the flags that decide determinism.

Bit-exact replay of training needs more than restored state: the same kernels must produce the
same bits. :func:`enable_determinism` sets the switches torch's reproducibility notes document;
:func:`determinism_flags` reports them so a recording can store them as provenance and a replay
can say which one differs.

Example:
    >>> flags = determinism_flags()
    >>> sorted(flags)[:2]
    ['cublas_workspace_config', 'cuda_matmul_allow_tf32']
"""

from __future__ import annotations

import os
import random
import warnings
from typing import Any

import numpy as np
import torch

from replaykit import errors as _errors

__all__ = ["CUBLAS_WORKSPACE_CONFIG", "determinism_flags", "enable_determinism"]

#: The value :func:`enable_determinism` gives the ``CUBLAS_WORKSPACE_CONFIG`` environment
#: variable when unset: cuBLAS needs a fixed workspace configuration for deterministic
#: results (CUDA >= 10.2).
CUBLAS_WORKSPACE_CONFIG = ":4096:8"
_CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"


def enable_determinism(seed: int | None = None, *, warn_only: bool = False) -> dict[str, Any]:
    """Make torch choose deterministic algorithms, and optionally seed every global RNG.

    Sets ``torch.use_deterministic_algorithms(True, warn_only=warn_only)``,
    ``torch.backends.cudnn.deterministic = True``, ``torch.backends.cudnn.benchmark = False``
    and, if unset, the ``CUBLAS_WORKSPACE_CONFIG`` environment variable. That variable is read
    when cuBLAS starts, so setting it after CUDA was initialised may be too late; a
    :class:`~replaykit.errors.ReplaykitWarning` says so. Call this at the very start.

    Args:
        seed: when given, seeds Python's ``random``, NumPy's global generator and torch (CPU and
            all CUDA devices) with it.
        warn_only: let operations without a deterministic implementation warn instead of raise.

    Returns:
        The settings applied, keyed like :func:`determinism_flags`, plus ``seed``.

    Raises:
        UsageError: ``seed`` is not a non-negative int.
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise _errors.UsageError(f"seed must be a non-negative int or None, got {seed!r}")
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if _CUBLAS_ENV not in os.environ:
        os.environ[_CUBLAS_ENV] = CUBLAS_WORKSPACE_CONFIG
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            warnings.warn(
                f"set {_CUBLAS_ENV}={CUBLAS_WORKSPACE_CONFIG} after CUDA was initialised, so "
                "cuBLAS may not see it; call enable_determinism() before any CUDA work, or set "
                "the variable in the environment that starts Python",
                _errors.ReplaykitWarning,
                stacklevel=2,
            )
    if seed is not None:
        random.seed(seed)
        # The legacy global generator only takes 32-bit seeds.
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)  # also seeds every CUDA device (lazily if not initialised)
    return {
        "deterministic_algorithms": True,
        "deterministic_algorithms_warn_only": bool(warn_only),
        "cudnn_deterministic": True,
        "cudnn_benchmark": False,
        "cublas_workspace_config": os.environ[_CUBLAS_ENV],
        "seed": seed,
    }


def determinism_flags() -> dict[str, Any]:
    """Report the current settings that decide whether torch computes bit-reproducibly.

    Returns:
        A flat dict of JSON scalars: ``deterministic_algorithms``,
        ``deterministic_algorithms_warn_only``, ``cudnn_deterministic``, ``cudnn_benchmark``,
        ``cublas_workspace_config`` (``None`` when unset), ``num_threads``,
        ``num_interop_threads``, ``cuda_matmul_allow_tf32``, ``cudnn_allow_tf32`` and
        ``float32_matmul_precision``.
    """
    return {
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
        "deterministic_algorithms_warn_only": bool(
            torch.is_deterministic_algorithms_warn_only_enabled()
        ),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cublas_workspace_config": os.environ.get(_CUBLAS_ENV),
        # Thread counts change reduction order in some CPU kernels, hence bits.
        "num_threads": int(torch.get_num_threads()),
        "num_interop_threads": int(torch.get_num_interop_threads()),
        "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": str(torch.get_float32_matmul_precision()),
    }
