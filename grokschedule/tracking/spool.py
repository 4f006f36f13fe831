"""A sweep's MLflow records as a local append-only journal (JSONL) with a send cursor.

Every record is written here *before* anything is sent, so the Tune driver never waits on the
network and nothing is lost while MLflow is away: ``records.jsonl`` is the complete account of the
sweep, ``cursor.json`` says how far it has reached MLflow (byte offset, and the MLflow run id of
each local run key), ``files/`` holds the artifacts the records point at, and ``rejected.jsonl``
keeps any record MLflow refused, with the error. Runs are named by local keys (``sweep``, a trial
id), so a run can be created, logged to and nested before the server has ever answered.

Layout: ``<spool root>/<sweep id>/{records.jsonl, cursor.json, rejected.jsonl, files/}``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORDS = "records.jsonl"
CURSOR = "cursor.json"
REJECTED = "rejected.jsonl"
FILES = "files"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Cursor:
    """How far the journal has reached MLflow."""

    offset: int = 0
    runs: dict[str, str] = field(default_factory=dict)  # local run key -> MLflow run id
    experiment_id: str | None = None


class Spool:
    """One sweep's journal. Appends are thread-safe; one sender reads and commits."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        (self.directory / FILES).mkdir(parents=True, exist_ok=True)
        self.records_path = self.directory / RECORDS
        self._lock = threading.Lock()
        self._file = self.records_path.open("a", encoding="utf-8")
        self.appended = threading.Event()  # set on every append: wakes the sender

    def append(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
        self.appended.set()

    def store_file(self, key: str, name: str, data: bytes) -> str:
        """Keep an artifact's bytes in the spool; returns the path to put in a record."""
        relative = Path(FILES) / key / name
        path = self.directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, data)
        return relative.as_posix()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    # -- the sender's side --------------------------------------------------------------------
    def load_cursor(self) -> Cursor:
        path = self.directory / CURSOR
        if not path.exists():
            return Cursor()
        data = json.loads(path.read_text())
        return Cursor(data["offset"], dict(data["runs"]), data.get("experiment_id"))

    def commit(self, cursor: Cursor) -> None:
        data = {"offset": cursor.offset, "runs": cursor.runs, "experiment_id": cursor.experiment_id}
        _write_atomic(self.directory / CURSOR, json.dumps(data).encode())

    def pending(self, offset: int) -> list[tuple[dict[str, Any], int]]:
        """Complete records after ``offset``, each with the offset just past it."""
        with self.records_path.open("rb") as f:
            f.seek(offset)
            tail = f.read()
        out = []
        for line in tail.splitlines(keepends=True):
            if not line.endswith(b"\n"):  # a record still being written
                break
            offset += len(line)
            out.append((json.loads(line), offset))
        return out

    def size(self) -> int:
        return self.records_path.stat().st_size

    def reject(self, records: list[dict[str, Any]], error: str) -> None:
        with (self.directory / REJECTED).open("a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps({"error": error, "record": record}) + "\n")


def read_records(directory: Path) -> Iterator[dict[str, Any]]:
    """All complete records of a sweep's journal, in order (for reports and resumption)."""
    path = Path(directory) / RECORDS
    if not path.exists():
        return
    with path.open("rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                yield json.loads(line)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
