"""Read the records of an offline W&B run (``wandb/offline-run-*/run-*.wandb``) back, for tests.

wandb 0.31 no longer ships a Python reader for its run files. The format is LevelDB's log format
(32 KiB blocks of chunks with a 7-byte header: CRC32, little-endian length, chunk type) after a 7-byte
file header (``:W&B``, magic, version), and each record is a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    position, pending = 7, b""
    while position + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK_SIZE - position % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER:
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + CHUNK_HEADER])
        chunk = data[position + CHUNK_HEADER : position + CHUNK_HEADER + length]
        position += CHUNK_HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
        else:  # zero padding at the end of a block or of a file still being written
            position += left_in_block - CHUNK_HEADER - length


def records(run_dir: Path, timeout: float = 60.0) -> list[wandb_internal_pb2.Record]:
    """Every record of the finished offline run in ``run_dir`` (a ``wandb/offline-run-*`` folder).

    W&B's service writes the file in the background and may still be flushing it after ``finish()``
    returns: wait (up to ``timeout`` seconds) for the run's exit record.
    """
    (run_file,) = Path(run_dir).glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        parsed = []
        for payload in _payloads(run_file):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            parsed.append(record)
        if any(record.WhichOneof("record_type") == "exit" for record in parsed):
            return parsed
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run_file} has no exit record after {timeout} s: the run did not finish")
        time.sleep(0.2)


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def history(run_dir: Path) -> list[dict[str, Any]]:
    """The logged history rows (``wandb.log`` calls), values decoded from JSON."""
    rows = []
    for record in records(run_dir):
        if record.WhichOneof("record_type") == "history":
            rows.append({_key(item): json.loads(item.value_json) for item in record.history.item})
    return rows


def _merged_updates(run_dir: Path, record_type: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for record in records(run_dir):
        if record.WhichOneof("record_type") == record_type:
            for item in getattr(record, record_type).update:
                values[_key(item)] = json.loads(item.value_json)
    return values


def config(run_dir: Path) -> dict[str, Any]:
    """The run's config, merged over every config update."""
    return _merged_updates(run_dir, "config")


def summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary, merged over every summary update."""
    return _merged_updates(run_dir, "summary")
