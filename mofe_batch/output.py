"""Resumable JSONL results: one line per scored row, appended and fsynced per chunk.

On start the existing output is read back; a torn last line (a job killed mid-write) is
cut off, and the ids already there are skipped by the new run. A chunk is written with one
`write` + flush + fsync, so after SIGKILL the file holds whole chunks plus at most one torn
line, which the next run removes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path


def repair_and_read_ids(path: Path) -> set[str]:
    """Ids already in `path`; truncates the file after its last complete, valid line."""
    path = Path(path)
    if not path.exists():
        return set()
    ids: set[str] = set()
    good_end = 0
    with open(path, "rb") as fh:
        offset = 0
        for raw in fh:
            end = offset + len(raw)
            if not raw.endswith(b"\n"):
                break  # torn: the writer died before the newline
            try:
                row = json.loads(raw)
            except ValueError:
                if fh.read(1):  # not the last line: damage this tool cannot have caused
                    raise ValueError(f"{path}: byte {offset} starts a line that is not JSON; "
                                     "refusing to resume into it") from None
                break  # a last line left by a crash: cut it
            if not isinstance(row, dict) or "id" not in row:
                raise ValueError(f"{path}: line is not a result row (no 'id'); refusing to "
                                 f"resume into a file this tool did not write")
            ids.add(str(row["id"]))
            good_end = offset = end
    if good_end != path.stat().st_size:
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
            fh.flush()
            os.fsync(fh.fileno())
    return ids


def read_rows(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


class ResultWriter:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write_chunk(self, rows: list[dict]) -> None:
        if not rows:
            return
        self._fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()
