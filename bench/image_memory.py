"""What the register image costs in memory: one unit read whole, every table.

    .venv/bin/python bench/image_memory.py

Fills a `RegisterImage` as a device read in the largest reads would: holding and input
registers 0-65535 in reads of 125, coils and discrete inputs 0-65535 in reads of 2,000,
and prints what tracemalloc counts for it: the most a unit can cost, since the image
holds only what was read and drops older answers a newer one covers.
"""

from __future__ import annotations

import struct
import tracemalloc

from tcp_multiplexer.protocols.modbus.image import RegisterImage
from tcp_multiplexer.protocols.modbus.mbap import build_adu

ADDRESSES = 65536


def read_and_answer(function: int, start: int, count: int) -> tuple[bytes, bytes]:
    """A read request and the device's answer to it (all values 0)."""
    size = (count + 7) // 8 if function in (1, 2) else 2 * count
    request = build_adu(1, 1, struct.pack(">BHH", function, start, count))
    return request, build_adu(1, 1, bytes((function, size)) + bytes(size))


def main() -> None:
    tracemalloc.start()
    image = RegisterImage(keep=60.0)
    before = tracemalloc.get_traced_memory()[0]
    rows = []
    for function, name, step in (
        (3, "holding", 125),
        (4, "input", 125),
        (1, "coils", 2000),
        (2, "discrete", 2000),
    ):
        for start in range(0, ADDRESSES, step):
            request, answer = read_and_answer(function, start, min(step, ADDRESSES - start))
            image.put(request, answer, 0.0, 0.0)
        rows.append((name, tracemalloc.get_traced_memory()[0] - before))
    print("| tables read whole (one unit) | answers held | memory |")
    print("|---|---|---|")
    print(f"| holding | {ADDRESSES // 125 + 1} | {rows[0][1] / 1e6:.2f} MB |")
    print(f"| holding, input | {2 * (ADDRESSES // 125 + 1)} | {rows[1][1] / 1e6:.2f} MB |")
    print(f"| all four | {image.answers_held()} | {rows[3][1] / 1e6:.2f} MB |")


if __name__ == "__main__":
    main()
