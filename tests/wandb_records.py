"""A reader for the `.wandb` transaction log of an offline W&B run (wandb 0.31 ships no reader of its own).

Format (LevelDB log, as wandb-core writes it):
  file header, 7 bytes: b":W&B", uint16 LE magic 0xBEE1, uint8 version 0;
  then 32 KiB blocks (the header counts towards the first one). Each block holds records of
  7-byte header: uint32 LE CRC-32 (IEEE, zlib) of the type byte followed by the payload,
  uint16 LE payload length, uint8 type (1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST); a block tail shorter
  than a record header is zero padding. FIRST/MIDDLE/LAST pieces of one payload are joined.
Payloads are `wandb_internal_pb2.Record` protobufs.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator

IDENT = b":W&B"
MAGIC = 0xBEE1
VERSION = 0
FILE_HEADER_LEN = 7
BLOCK_LEN = 32768
RECORD_HEADER_LEN = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbLogError(ValueError):
    """The file is not a well-formed W&B LevelDB log."""


def _crc(kind: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF


def payloads(path: Path) -> Iterator[bytes]:
    """Every complete record payload, in file order, after checking header, CRCs and piece order."""
    data = Path(path).read_bytes()
    if len(data) < FILE_HEADER_LEN or data[:4] != IDENT:
        raise WandbLogError(f"{path}: no {IDENT!r} file header")
    magic, version = struct.unpack("<HB", data[4:7])
    if magic != MAGIC or version != VERSION:
        raise WandbLogError(f"{path}: magic {magic:#x} version {version}, expected {MAGIC:#x} version {VERSION}")
    pos = FILE_HEADER_LEN
    pending: bytearray | None = None
    while pos < len(data):
        left_in_block = BLOCK_LEN - pos % BLOCK_LEN
        if left_in_block < RECORD_HEADER_LEN:  # block trailer: zero padding
            if any(data[pos:pos + left_in_block]):
                raise WandbLogError(f"{path}: non-zero padding at offset {pos}")
            pos += left_in_block
            continue
        if pos + RECORD_HEADER_LEN > len(data):
            raise WandbLogError(f"{path}: truncated record header at offset {pos}")
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + RECORD_HEADER_LEN])
        if crc == 0 and length == 0 and kind == 0:  # zero-filled rest of the last block
            if any(data[pos:pos + left_in_block]):
                raise WandbLogError(f"{path}: zero record header followed by data at offset {pos}")
            pos += left_in_block
            continue
        start = pos + RECORD_HEADER_LEN
        if length > left_in_block - RECORD_HEADER_LEN or start + length > len(data):
            raise WandbLogError(f"{path}: record at offset {pos} runs past its block or the file")
        payload = data[start:start + length]
        if _crc(kind, payload) != crc:
            raise WandbLogError(f"{path}: CRC mismatch for the record at offset {pos}")
        pos = start + length
        if kind == FULL:
            if pending is not None:
                raise WandbLogError(f"{path}: FULL record inside a fragmented one at offset {pos}")
            yield bytes(payload)
        elif kind == FIRST:
            if pending is not None:
                raise WandbLogError(f"{path}: FIRST record inside a fragmented one at offset {pos}")
            pending = bytearray(payload)
        elif kind in (MIDDLE, LAST):
            if pending is None:
                raise WandbLogError(f"{path}: {'MIDDLE' if kind == MIDDLE else 'LAST'} record without FIRST")
            pending += payload
            if kind == LAST:
                yield bytes(pending)
                pending = None
        else:
            raise WandbLogError(f"{path}: unknown record type {kind} at offset {pos}")
    if pending is not None:
        raise WandbLogError(f"{path}: file ends inside a fragmented record")


def records(path: Path) -> list:
    """All records of the file as `wandb_internal_pb2.Record` messages."""
    from wandb.proto import wandb_internal_pb2

    out = []
    for payload in payloads(path):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(payload)
        out.append(rec)
    return out


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def _items(items) -> dict[str, Any]:
    return {_key(i): json.loads(i.value_json) for i in items}


def history(recs: list) -> list[dict[str, Any]]:
    """One dict per history record: key -> decoded value (with `_step`)."""
    return [_items(r.history.item) for r in recs if r.WhichOneof("record_type") == "history"]


def config(recs: list) -> dict[str, Any]:
    """The run config: the run record's config, updated by every config record, in order."""
    out: dict[str, Any] = {}
    for r in recs:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(_items(r.run.config.update))
        elif kind == "config":
            out.update(_items(r.config.update))
            for item in r.config.remove:
                out.pop(_key(item), None)
    return {k: (v.get("value", v) if isinstance(v, dict) and set(v) <= {"value", "desc"} else v)
            for k, v in out.items()}


def summary(recs: list) -> dict[str, Any]:
    """The run summary after every summary record is applied, in order."""
    out: dict[str, Any] = {}
    for r in recs:
        if r.WhichOneof("record_type") == "summary":
            out.update(_items(r.summary.update))
            for item in r.summary.remove:
                out.pop(_key(item), None)
    return out


def run_file(run_dir: Path) -> Path:
    """The one `.wandb` file under a run folder's wandb/ directory."""
    found = sorted(Path(run_dir).glob("wandb/*run-*/*.wandb"))
    if len(found) != 1:
        raise WandbLogError(f"{run_dir}: expected one .wandb file, found {[str(f) for f in found]}")
    return found[0]
