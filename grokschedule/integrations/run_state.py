"""A callback's scheduler state as bytes for its trainer's checkpoint, and back.

``torch.save`` of a plain dict, as the state holds both tensors (the rollback point, the gradient
transforms' buffers) and the ``GrokPolicy`` itself, whose detectors, predictor history and kick
statistics have no other serialized form (Ray Tune pickles ``GrokScheduler`` whole for
``Tuner.restore`` the same way). Kept as bytes, it passes through a checkpoint that its trainer
loads with ``weights_only=True`` (Lightning, with torch's default).

Loading runs no pickled code, as both trainers load their own files: ``torch.load`` with
``weights_only=True``, allowing only the classes the state is made of — those defined in
``grokschedule.core`` (pure data) and numpy's arrays, dtypes and random generators. Anything
else is refused with ``UnsafeCheckpointError`` naming it, before anything is built.
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from grokschedule.training.checkpoints import UnsafeCheckpointError

if TYPE_CHECKING:
    from grokschedule.integrations.common import GrokRun

STATE_FORMAT = 1  # of the packed state; a state of another format is refused
_CORE = "grokschedule.core."
# What numpy pickles an array, a dtype or a Generator (with its bit generator) as.
_NUMPY = frozenset(
    {
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.random._pickle.__bit_generator_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random._pcg64.PCG64",
        "numpy.random.bit_generator.SeedSequence",
        "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
    }
)
# The dtypes' own classes, which an array's dtype is rebuilt with (not named as globals).
_DTYPES = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]


def pack_state(run: GrokRun) -> bytes:
    """``run.state_dict()``, with its format, as bytes."""
    buffer = io.BytesIO()
    torch.save({"format": STATE_FORMAT, **run.state_dict()}, buffer)
    return buffer.getvalue()


def unpack_state(data: bytes, where: str) -> dict[str, Any]:
    """The state ``pack_state`` made; ``UnsafeCheckpointError`` for one that names any other
    class or function, a clear ``ValueError`` naming ``where`` it came from for anything else
    (a truncated file, another format)."""
    try:
        allowed = [_resolve(name, where) for name in _globals(data)]
        with torch.serialization.safe_globals([*allowed, *_DTYPES]):
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise ValueError(f"{where}: not a readable grokschedule state ({error})") from error
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{where}: not a grokschedule state of format {STATE_FORMAT} (found {found!r})"
        )
    return state


def _globals(data: bytes) -> list[str]:
    """The classes and functions the pickle names, read without building anything."""
    return torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))


def _resolve(name: str, where: str) -> Any:
    """The class ``name`` stands for, if the state may hold it; else ``UnsafeCheckpointError``."""
    module, _, attribute = name.rpartition(".")
    if name in _NUMPY:
        return getattr(importlib.import_module(module), attribute)
    if name.startswith(_CORE):
        try:
            found = getattr(importlib.import_module(module), attribute, None)
        except ImportError:  # no such module in this version of grokschedule
            found = None
        if isinstance(found, type) and found.__module__ == module:  # a class defined there
            return found
    raise UnsafeCheckpointError(
        f"{where}: the scheduler state names {name}, which a grokschedule state never holds "
        "(only grokschedule.core's classes and numpy's arrays and generators); it was written "
        "by other code or altered, and is not loaded"
    )
