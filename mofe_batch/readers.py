"""Streamed input readers: JSONL, JSON (array or object per line), CSV and Parquet.

Every reader yields `(position, record)` one row at a time, so a file larger than memory
works. `position` is what an error message should name: the 1-based line for JSONL/CSV, the
1-based element for a JSON array, the 1-based row for Parquet. A record that cannot even be
decoded is yielded as a `BadRecord` so the caller can count it (or fail with --strict).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("jsonl", "json", "csv", "parquet")
_JSON_CHUNK = 1 << 16


@dataclass(frozen=True)
class BadRecord:
    reason: str


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "ndjson"):
        return "jsonl"
    if suffix in FORMATS:
        return suffix
    raise ValueError(f"{path}: cannot tell the input format from the suffix {path.suffix!r} "
                     f"(use one of .jsonl .json .csv .parquet)")


def iter_records(path: Path) -> Iterator[tuple[int, dict | BadRecord]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input file not found")
    fmt = detect_format(path)
    if fmt == "jsonl":
        yield from _iter_jsonl(path)
    elif fmt == "json":
        yield from _iter_json(path)
    elif fmt == "csv":
        yield from _iter_csv(path)
    else:
        yield from _iter_parquet(path)


def position_label(path: Path) -> str:
    """What `position` counts for this file ("line", "element", "row")."""
    return {"jsonl": "line", "csv": "line", "json": "element",
            "parquet": "row"}[detect_format(Path(path))]


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict | BadRecord]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, BadRecord(f"invalid JSON ({exc.msg})")
                continue
            yield lineno, record if isinstance(record, dict) else BadRecord("not a JSON object")


def _iter_json(path: Path) -> Iterator[tuple[int, dict | BadRecord]]:
    """A top-level JSON array, decoded element by element with a bounded buffer."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as fh:
        buf = fh.read(_JSON_CHUNK).lstrip()
        if not buf.startswith("["):
            # Not an array: a whole-file object, or concatenated objects (JSON Lines).
            fh.seek(0)
            yield from _iter_jsonl(path)
            return
        buf, index, eof = buf[1:], 0, False
        while True:
            buf = buf.lstrip().lstrip(",").lstrip()
            if buf.startswith("]"):
                return
            try:
                record, end = decoder.raw_decode(buf)
            except json.JSONDecodeError as exc:
                if eof:
                    raise ValueError(f"{path}: invalid JSON array near element {index + 1} "
                                     f"({exc.msg})") from None
                more = fh.read(_JSON_CHUNK)
                eof = not more
                buf += more
                continue
            index += 1
            buf = buf[end:]
            yield index, record if isinstance(record, dict) else BadRecord("not a JSON object")


def _iter_csv(path: Path) -> Iterator[tuple[int, dict | BadRecord]]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        for record in reader:
            # line_num is the physical line the record ended on (quoted newlines span lines).
            yield reader.line_num, {k: v for k, v in record.items() if k is not None}


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict | BadRecord]]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield row, record
