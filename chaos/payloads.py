"""Hostile files, built on the spot: shared by `make abuse` and the tests that keep each attack
fixed (nothing binary is committed)."""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")


def noise(size: tuple[int, int], fmt: str, *, seed: int = 0, **save: object) -> bytes:
    """An image of random pixels (it barely compresses: the largest file for its size)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **save)
    return buf.getvalue()


def padded(data: bytes, fmt: str, size: int) -> bytes:
    """`data` grown to exactly `size` bytes with ancillary segments every decoder skips (PNG:
    private `daKn` chunks before IEND; JPEG: comments after SOI), so a test can send a valid
    image of any byte size."""
    if fmt == "PNG":
        import struct
        import zlib

        def chunk(payload: bytes) -> bytes:
            crc = zlib.crc32(b"daKn" + payload) & 0xFFFFFFFF
            return struct.pack(">I", len(payload)) + b"daKn" + payload + struct.pack(">I", crc)

        body, end = data[:-12], data[-12:]  # IEND is the last 12 bytes
        missing = size - len(data)
        extra = b""
        while missing > 0:
            part = min(missing - 12, 1 << 20)
            if part < 0:
                raise ValueError(f"cannot pad {missing} bytes with chunks of 12 or more")
            extra += chunk(b"\0" * part)
            missing -= part + 12
        return body + extra + end
    # JPEG: COM segments (2 marker + 2 length bytes + up to 65533 of text) after SOI.
    missing, comments = size - len(data), b""
    while missing > 0:
        part = min(missing, 65537)
        if 0 < missing - part < 4:  # leave room for a last segment's own 4 bytes
            part -= 4
        comments += b"\xff\xfe" + (part - 2).to_bytes(2, "big") + b"\0" * (part - 4)
        missing -= part
    return data[:2] + comments + data[2:]


def scan_bomb(scans: int, size: tuple[int, int] = (1024, 1024)) -> bytes:
    """A progressive JPEG whose one smallest scan is repeated `scans` times: valid to a decoder
    (a repeated refinement is only a warning), tiny on the wire, and each copy a pass over every
    block of the image."""
    grey = Image.new("L", size, 128)
    buf = io.BytesIO()
    grey.save(buf, format="JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    # Each scan: its SOS marker up to the next marker that is not inside entropy data.
    starts = [m.start() for m in _MARKER.finditer(data) if data[m.start() + 1] == 0xDA]
    spans = []
    for start in starts:
        header_end = start + 2 + int.from_bytes(data[start + 2 : start + 4], "big")
        following = _MARKER.search(data, header_end)
        spans.append((start, following.start() if following else len(data) - 2))
    smallest = min(spans[1:], key=lambda s: s[1] - s[0])  # not the first (DC) scan
    scan = data[smallest[0] : smallest[1]]
    return data[:-2] + scan * scans + data[-2:]
