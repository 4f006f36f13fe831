"""Checkpoint files that can be checked, and a resume that skips a broken latest checkpoint.

Writing: ``write_file`` writes to a temporary name, fsyncs and renames, so a file under its final
name is whole; ``seal`` then records the size and sha256 of every file of the checkpoint
directory in ``manifest.json``. The manifest is what catches damage *after* writing: Tune copies
the directory to the run's storage file by file (``StorageContext.persist_current_checkpoint``),
with no atomic step, and disks and object stores truncate or garble files.

Resuming: ``load_valid(tune.get_checkpoint(), load)`` verifies the latest checkpoint against its
manifest and loads it; if that fails it warns, naming the broken checkpoint and the reason, and
tries the previous ones, newest first. Tune only hands a trainable its *latest* checkpoint, so
the previous ones are found next to it: Ray 2.60 persists every checkpoint of a trial as a
sibling directory ``<trial dir>/checkpoint_<index:06d>`` on the storage filesystem and deletes
old ones only beyond ``CheckpointConfig(num_to_keep)`` (default: keep all). Listing those
siblings costs nothing at save time; the alternative, carrying the previous state inside every
checkpoint, doubles every write for the rare resume that needs it. Keep ``num_to_keep`` at 2 or
more (or unset) for the fallback to have something to fall back to. Only siblings with a lower
index count: a higher one is a checkpoint whose upload a failure interrupted, never registered.

A checkpoint without a manifest (written before this module, or by other code) is loaded
unverified; a load that raises counts as broken all the same. If no checkpoint is usable the
trainable starts from scratch, with a warning that lists every failure. Tune itself refuses a
latest checkpoint whose *directory* is gone ("does not exist on storage anymore") before the
trainable runs; that case stays Tune's error.

Sharded (DeepSpeed) checkpoints: every rank writes its part into a directory of its own, which
Ray Train merges into one, so each rank seals its own files (``seal_rank``,
``manifest.rank<R>.json``). ``load_agreed`` is the resume of every rank: each verifies the
candidate it sees against all ranks' manifests (``verify_sharded``), the ranks all-reduce the
verdict per candidate, newest first, and all load the first every rank accepts, so no rank
resumes from a checkpoint another rejected. No Ray here: the caller passes what
``ray.train.get_checkpoint()`` returned.

Loading is safe on shared storage: ``load_tensors`` reads a torch file with
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers but runs no
pickled code, so a checkpoint someone else could write cannot execute anything in a worker. A
file that carries a pickled object is refused with ``UnsafeCheckpointError`` naming it (and
``load_valid`` falls back past it like past any broken checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import posixpath
import re
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import torch
import torch.distributed as dist

MANIFEST = "manifest.json"
_RANK_MANIFEST = re.compile(r"^manifest\.rank(\d+)\.json$")
_INDEXED = re.compile(r"^checkpoint_(\d+)$")
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")  # torch's weights_only refusal
_UNPICKLER_ERROR = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")
_CHUNK = 1 << 20
T = TypeVar("T")


class Checkpoint(Protocol):
    """What is read of a stored checkpoint (``ray.train.Checkpoint`` is one), so this module
    needs no Ray: its path and filesystem, a local view of it, and a sibling built alike."""

    path: str
    filesystem: Any

    def __init__(self, path: str, filesystem: Any = None) -> None: ...

    def as_directory(self) -> AbstractContextManager[str]: ...


class CorruptCheckpointError(ValueError):
    """A checkpoint directory does not match its manifest (a file missing, truncated, changed)."""


class CheckpointFallbackWarning(UserWarning):
    """The latest checkpoint was unusable: an earlier one (or a fresh start) was used."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds a pickled object, which ``weights_only`` loading refuses."""


def save_tensors(value: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (``write_file``); ``value`` must hold only tensors
    and plain containers, or ``load_tensors`` will refuse it."""
    write_file(path, lambda file: torch.save(value, file))


def load_tensors(path: Path, map_location: Any = None) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers, and the
    classes registered with ``torch.serialization.add_safe_globals`` — never arbitrary pickled
    objects. ``UnsafeCheckpointError`` naming the file if it carries one."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = _UNSAFE_GLOBAL.search(str(error))
        if found is None:  # a malformed pickle stream: garbled, or not a torch checkpoint
            detail = _UNPICKLER_ERROR.search(str(error))
            reason = detail.group(1) if detail else str(error).splitlines()[0]
            raise UnsafeCheckpointError(
                f"{path}: torch.load(weights_only=True) refused it ({reason}): the file is "
                "garbled or not a tensor checkpoint"
            ) from error
        raise UnsafeCheckpointError(
            f"{path}: torch.load(weights_only=True) refused a pickled object ({found.group(1)}) "
            "in this checkpoint; grokschedule's checkpoints hold only tensors, plain containers "
            "and allowlisted classes, so this file was written by other code or altered, and is "
            "not loaded"
        ) from error


def write_file(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through ``write(file)`` atomically: a reader (or a copy) sees the old file
    or the complete new one, never a prefix."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _files(directory: Path) -> list[str]:
    return sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.name != MANIFEST and not _RANK_MANIFEST.match(p.name)
    )


def seal(directory: Path) -> dict[str, dict[str, Any]]:
    """Write ``manifest.json`` (size and sha256 of every other file) into ``directory``; call it
    once the checkpoint's files are written. Returns the manifest's entries."""
    directory = Path(directory)
    entries = {
        name: {"size": (directory / name).stat().st_size, "sha256": _digest(directory / name)}
        for name in _files(directory)
    }
    payload = json.dumps({"version": 1, "files": entries}, indent=1).encode()
    write_file(directory / MANIFEST, lambda file: file.write(payload))
    return entries


def verify(directory: Path) -> bool:
    """Check ``directory`` against its manifest: True if it matches, False if it has none
    (unverifiable, not necessarily broken); ``CorruptCheckpointError`` naming the first file
    that is missing, of the wrong size or with the wrong hash."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.exists():
        return False
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise CorruptCheckpointError(f"{MANIFEST} is unreadable: {error}") from error
    _check_entries(directory, entries)
    return True


def _check_entries(directory: Path, entries: dict[str, dict[str, Any]]) -> None:
    for name, entry in entries.items():
        path = directory / name
        if not path.is_file():
            raise CorruptCheckpointError(f"{name} is missing")
        size = path.stat().st_size
        if size != entry["size"]:
            raise CorruptCheckpointError(f"{name} has {size} bytes, expected {entry['size']}")
        if _digest(path) != entry["sha256"]:
            raise CorruptCheckpointError(f"{name} does not match its sha256")


def candidates(latest: Checkpoint) -> list[Checkpoint]:
    """``latest``, then the same trial's earlier ``checkpoint_NNNNNN`` siblings on its storage
    filesystem, newest first (only ``latest`` if it is not such a directory)."""
    from pyarrow.fs import FileSelector, FileType

    parent, name = posixpath.split(latest.path.rstrip("/"))
    match = _INDEXED.match(name)
    if match is None:
        return [latest]
    index = int(match.group(1))
    filesystem = latest.filesystem
    if filesystem is None:  # Checkpoint infers one from the path; None only for an empty path
        return [latest]
    try:
        infos = filesystem.get_file_info(FileSelector(parent))
    except OSError:  # the storage cannot list the trial's directory: only the latest is known
        return [latest]
    earlier = []
    for info in infos:
        sibling = _INDEXED.match(info.base_name)
        if info.type == FileType.Directory and sibling and int(sibling.group(1)) < index:
            earlier.append((int(sibling.group(1)), info.path))
    earlier.sort(reverse=True)
    return [latest] + [type(latest)(path, filesystem=filesystem) for _, path in earlier]


def load_valid(latest: Checkpoint | None, load: Callable[[Path], T]) -> T | None:
    """``load(directory)`` of the newest usable checkpoint, starting at ``latest`` (what
    ``tune.get_checkpoint()`` returns); None if there is none. A checkpoint is unusable if it
    fails ``verify`` or ``load`` raises; skipping one is a ``CheckpointFallbackWarning`` that
    names it, why, and the checkpoint used instead (or that training starts from scratch)."""
    if latest is None:
        return None
    failures: list[str] = []
    for candidate in candidates(latest):
        try:
            with candidate.as_directory() as directory:
                verify(Path(directory))
                value = load(Path(directory))
        except Exception as error:  # torn or garbled files fail in many ways: skip them all
            failures.append(f"{candidate.path}: {type(error).__name__}: {error}")
            continue
        _warn_fallback(failures, candidate)
        return value
    _warn_fallback(failures, None)
    return None


# -- sharded checkpoints (DeepSpeed: every rank writes its own part) -------------------------


def rank_manifest(rank: int) -> str:
    """The name of rank ``rank``'s manifest in a sharded checkpoint."""
    return f"manifest.rank{rank}.json"


def seal_rank(directory: Path, rank: int, world_size: int) -> dict[str, dict[str, Any]]:
    """Write rank ``rank``'s manifest (size and sha256 of every file in ``directory``) once this
    rank's part is written. Every rank seals the directory it wrote: under Ray Train each rank
    writes to a node-local directory of its own that Ray then copies into the one storage
    checkpoint, so no rank ever sees the others' files before upload, and a manifest written by
    rank 0 alone would cover only rank 0's part. The merged checkpoint holds ``world_size``
    manifests; ``verify_sharded`` wants all of them."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
    directory = Path(directory)
    entries = {
        name: {"size": (directory / name).stat().st_size, "sha256": _digest(directory / name)}
        for name in _files(directory)
    }
    payload = json.dumps(
        {"version": 1, "rank": rank, "world_size": world_size, "files": entries}, indent=1
    ).encode()
    write_file(directory / rank_manifest(rank), lambda file: file.write(payload))
    return entries


def verify_sharded(directory: Path) -> bool:
    """Check a merged sharded checkpoint against every rank's manifest: True if all match,
    False if it has no rank manifest (written before sealing; loaded unverified);
    ``CorruptCheckpointError`` if the directory is gone, a rank's manifest is missing or
    unreadable, or a file is missing, truncated or changed."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CorruptCheckpointError(f"{directory} does not exist")
    manifests = sorted(p for p in directory.iterdir() if _RANK_MANIFEST.match(p.name))
    if not manifests:
        return False
    world_sizes = set()
    for manifest in manifests:
        try:
            content = json.loads(manifest.read_text())
            world_sizes.add(int(content["world_size"]))
            entries = content["files"]
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptCheckpointError(f"{manifest.name} is unreadable: {error}") from error
        _check_entries(directory, entries)
    if len(world_sizes) != 1:
        raise CorruptCheckpointError(f"rank manifests disagree on world_size: {world_sizes}")
    (world_size,) = world_sizes
    for rank in range(world_size):
        if not (directory / rank_manifest(rank)).is_file():
            raise CorruptCheckpointError(f"{rank_manifest(rank)} is missing")
    return True


def all_ranks_accept(accepted: bool, device: torch.device) -> bool:
    """True on every rank if ``accepted`` is True on every rank (one all-reduce MIN; a no-op
    without a process group). ``device``: the collective's device (CUDA for NCCL)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return accepted
    flag = torch.tensor([int(accepted)], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _most_on_any_rank(count: int, device: torch.device) -> int:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return count
    value = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def load_agreed(
    latest: Checkpoint | None, load: Callable[[Path], T], device: torch.device
) -> T | None:
    """``load(directory)`` of the newest checkpoint that every rank verifies, starting at
    ``latest``; None (a fresh start) if there is none. Every rank must call it.

    Each rank verifies the candidate it sees (``verify_sharded``), newest first, and the ranks
    all-reduce the verdict, so they all load the same one: a rank that loaded a checkpoint the
    others rejected would hang the first collective or train from another step. Skipping one is
    a ``CheckpointFallbackWarning`` naming it, why, and the one chosen (or that training starts
    from scratch). ``load`` runs only on an agreed checkpoint, and an error in it is raised, not
    skipped: one rank falling back alone would split the ranks."""
    if not all_ranks_accept(latest is not None, device):
        if latest is not None:
            warnings.warn(
                f"another rank has no checkpoint; {latest.path} not used, starting from scratch",
                CheckpointFallbackWarning,
                stacklevel=2,
            )
        return None
    assert latest is not None
    found = candidates(latest)
    failures: list[str] = []
    for index in range(_most_on_any_rank(len(found), device)):
        if index >= len(found):
            all_ranks_accept(False, device)  # another rank lists more: follow its rounds
            continue
        candidate = found[index]
        with ExitStack() as stack:
            try:
                directory = Path(stack.enter_context(candidate.as_directory()))
                verify_sharded(directory)
                reason = None
            except Exception as error:  # a torn download fails in many ways: skip them all
                reason = f"{type(error).__name__}: {error}"
            if not all_ranks_accept(reason is None, device):
                failures.append(f"{candidate.path}: {reason or 'rejected on another rank'}")
                continue
            value = load(directory)
        _warn_fallback(failures, candidate)
        return value
    _warn_fallback(failures, None)
    return None


def _warn_fallback(failures: list[str], chosen: Checkpoint | None) -> None:
    """Name every checkpoint passed over and the one resumed from (``None``: a fresh start,
    always said)."""
    if chosen is not None and not failures:
        return
    rejected = "; ".join(failures)
    message = (
        f"no usable checkpoint ({rejected}); starting from scratch"
        if chosen is None
        else f"checkpoint unusable ({rejected}); resumed from the previous valid checkpoint "
        f"{chosen.path}"
    )
    warnings.warn(message, CheckpointFallbackWarning, stacklevel=3)
