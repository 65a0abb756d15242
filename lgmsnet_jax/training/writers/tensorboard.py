"""TensorBoard event files written (and read back) without TensorFlow or tensorboard.

An event file is a TFRecord stream (length, masked CRC32C, payload, masked CRC32C) of `Event` protobufs; we encode
the few fields we need by hand: Event{wall_time=1, step=2, file_version=3, summary=5}, Summary{value=1},
Summary.Value{tag=1, simple_value=2, image=4}, Summary.Image{height=1, width=2, colorspace=3, encoded=4}.
"""
from __future__ import annotations

import os
import pathlib
import socket
import struct
import time
from typing import Iterator


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as used by TFRecord."""
    c = 0xFFFFFFFF
    t = _TABLE
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _event(step: int, summary: bytes | None = None, file_version: str | None = None) -> bytes:
    out = _key(1, 1) + struct.pack("<d", time.time()) + _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if summary is not None:
        out += _bytes_field(5, summary)
    return out


def _scalar_value(tag: str, value: float) -> bytes:
    return _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", float(value))


def _image_value(tag: str, png: bytes, height: int, width: int, channels: int) -> bytes:
    img = (_key(1, 0) + _varint(height) + _key(2, 0) + _varint(width) + _key(3, 0) + _varint(channels)
           + _bytes_field(4, png))
    return _bytes_field(1, tag.encode()) + _bytes_field(4, img)


def _record(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc32c(length)) + payload + struct.pack("<I", masked_crc32c(payload))


class EventWriter:
    """Appends scalar and image summaries to a fresh `events.out.tfevents.*` file in `logdir`.

    Args:
      logdir: folder (created); TensorBoard reads every event file in it.
    """

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = pathlib.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.logdir / name
        self._f = open(self.path, "ab")
        self._f.write(_record(_event(0, file_version="brain.Event:2")))
        self._f.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Writes one Event holding a simple_value per key."""
        summary = b"".join(_bytes_field(1, _scalar_value(k, v)) for k, v in values.items())
        self._f.write(_record(_event(step, summary)))
        self._f.flush()

    def image(self, step: int, tag: str, png: bytes, height: int, width: int, channels: int = 3) -> None:
        """Writes one PNG-encoded image summary."""
        self._f.write(_record(_event(step, _bytes_field(1, _image_value(tag, png, height, width, channels)))))
        self._f.flush()

    def close(self) -> None:
        self._f.close()


# ------------------------------------------------------------------------------------------------ reading back

def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _read_varint(buf, i)
        elif wire == 1:
            v, i = buf[i:i + 8], i + 8
        elif wire == 5:
            v, i = buf[i:i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, v


def read_records(path: str | os.PathLike) -> Iterator[bytes]:
    """TFRecord payloads of a file, verifying both CRCs (ValueError names the offset on corruption)."""
    data = pathlib.Path(path).read_bytes()
    i = 0
    while i < len(data):
        length_bytes = data[i:i + 8]
        (n,) = struct.unpack("<Q", length_bytes)
        (crc,) = struct.unpack("<I", data[i + 8:i + 12])
        if crc != masked_crc32c(length_bytes):
            raise ValueError(f"{path}: bad length CRC at offset {i}")
        payload = data[i + 12:i + 12 + n]
        (crc,) = struct.unpack("<I", data[i + 12 + n:i + 16 + n])
        if crc != masked_crc32c(payload):
            raise ValueError(f"{path}: bad payload CRC at offset {i}")
        yield payload
        i += 16 + n


def read_events(path: str | os.PathLike) -> list[dict]:
    """Decodes an event file into dicts {"step", "wall_time", "file_version"?, "scalars": {}, "images": {}}."""
    out = []
    for payload in read_records(path):
        ev: dict = {"step": 0, "scalars": {}, "images": {}}
        for field, _, v in _fields(payload):
            if field == 1:
                ev["wall_time"] = struct.unpack("<d", v)[0]
            elif field == 2:
                ev["step"] = v
            elif field == 3:
                ev["file_version"] = v.decode()
            elif field == 5:
                for f2, _, value in _fields(v):
                    if f2 != 1:
                        continue
                    tag, scalar, image = None, None, None
                    for f3, _, x in _fields(value):
                        if f3 == 1:
                            tag = x.decode()
                        elif f3 == 2:
                            scalar = struct.unpack("<f", x)[0]
                        elif f3 == 4:
                            image = {("height", "width", "colorspace", "png")[f4 - 1]: y for f4, _, y in _fields(x)}
                    if scalar is not None:
                        ev["scalars"][tag] = scalar
                    if image is not None:
                        ev["images"][tag] = image
        out.append(ev)
    return out
