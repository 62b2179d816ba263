"""Draws the Home Assistant add-on's icon.png (128x128) and logo.png (250x100): several
client lines joining into one device line, in the standard library only (zlib).

    python3 packaging/make_addon_images.py      # writes addon/icon.png, addon/logo.png
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

BACKGROUND = (3, 169, 244)
LINE = (255, 255, 255)
DEVICE = (255, 193, 7)


def png(width: int, height: int, pixel: object) -> bytes:
    rows = b"".join(
        b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(width))  # type: ignore[operator]
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


def drawing(width: int, height: int):  # type: ignore[no-untyped-def]
    join_x, join_y = width * 0.62, height / 2
    starts = [height * f for f in (0.2, 0.4, 0.6, 0.8)]
    thickness = max(2.0, height / 32)

    def pixel(x: int, y: int) -> tuple[int, int, int]:
        if width * 0.78 <= x <= width * 0.9 and abs(y - join_y) <= height * 0.12:
            return DEVICE
        if join_x <= x <= width * 0.78 and abs(y - join_y) <= thickness:
            return LINE
        if width * 0.1 <= x <= join_x:
            t = (x - width * 0.1) / (join_x - width * 0.1)
            for start in starts:
                if abs(y - (start + (join_y - start) * t)) <= thickness:
                    return LINE
        return BACKGROUND

    return pixel


if __name__ == "__main__":
    folder = Path(__file__).resolve().parent.parent / "addon"
    (folder / "icon.png").write_bytes(png(128, 128, drawing(128, 128)))
    (folder / "logo.png").write_bytes(png(250, 100, drawing(250, 100)))
