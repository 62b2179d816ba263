"""The poller: reads a target's polled ranges in the background to keep its register
image fresh, and says what the image holds.

One `Polling` per target with an image. Each read of the plan (polls.py) falls due
every `every` seconds and is submitted to the target's dispatcher as the bridge's own
request, in the background round: a free target connection takes it only when no
client request waits. A read that falls due while its previous one is still waiting
or on its way is skipped and counted late, never queued twice. While no target
connection is up, polls pause: they never make the pool connect (its reconnecting goes
on as usual) and resume with the connection.

A merged read the device refuses with exception 0x02 (a hole in its register map) is
read in its separate ranges from then on (logged once at NOTICE); a single range it
refuses is read at a tenth of its pace until it answers again (each refusal logged
once).

With `sunspec` units, the poller first scans each of them for SunSpec models (one read
at a time, in the background round, once a connection is up; a scan that gets no
answer is tried again after `SCAN_RETRY`), then polls the points of the models it found
like declared ones (sunspec.py names them).
"""

from __future__ import annotations

import logging
import math
import struct
from collections import Counter
from typing import Any, Final

from tcp_multiplexer.core.interfaces import (
    Clock,
    Dispatch,
    Priority,
    Request,
    RequestState,
    TimerHandle,
)
from tcp_multiplexer.logs import NOTICE
from tcp_multiplexer.options import format_duration
from tcp_multiplexer.protocols.modbus.gateway import ModbusGatewayPolicy
from tcp_multiplexer.protocols.modbus.mbap import (
    EXCEPTION_FLAG,
    EXCEPTION_NAMES,
    NOT_ANSWERED,
    ExceptionCode,
    build_adu,
    read_request,
)
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.modbus.points import BIT_TABLES, Point
from tcp_multiplexer.protocols.modbus.polls import TABLE_NAMES, PollRead, plan_reads
from tcp_multiplexer.protocols.modbus.sunspec import (
    SunSpecDevice,
    every_for,
    model_points,
    scan_summary,
)
from tcp_multiplexer.protocols.modbus.sunspec_scan import SunSpecScan
from tcp_multiplexer.protocols.spec import PointInfo, PoolState, Reading

SCAN_RETRY: Final = 30.0
"""Seconds before a SunSpec scan that got no answer is tried again."""
REFUSED_SLOWDOWN: Final = 10
"""A range the device refuses is read this many times less often."""
_TRUE: Final = frozenset({"on", "true", "1", "yes"})
_FALSE: Final = frozenset({"off", "false", "0", "no"})


def write_request(unit: int, table: str, address: int, data: bytes) -> bytes:
    """The request ADU (transaction id 0) writing `data` from `address`: one coil (0x05;
    `data` one byte 0 or 1), one register (0x06) or several (0x10)."""
    if table == "coils":
        pdu = struct.pack(">BHH", 5, address, 0xFF00 if data[0] else 0)
    elif len(data) == 2:
        pdu = struct.pack(">BH", 6, address) + data
    else:
        pdu = struct.pack(">BHHB", 16, address, len(data) // 2, len(data)) + data
    return build_adu(0, unit, pdu)


class _Scheduled:
    """One read of the plan and how it is going."""

    __slots__ = (
        "due",
        "every",
        "last_error",
        "last_read",
        "late",
        "read",
        "refused",
        "request",
    )

    def __init__(self, read: PollRead, due: float) -> None:
        self.read = read
        self.every = read.every
        """Its pace now: a tenth of it while the device refuses the range."""
        self.due = due
        self.request: Request | None = None
        """The read on its way (waiting or sent), if any."""
        self.refused = False
        self.last_error = ""
        self.last_read = float("-inf")
        """When its last answer arrived."""
        self.late = 0


class Polling:
    """The poller of one target (see the module docstring); also the target's image
    for observability. It is a `RequestOwner` for its own reads."""

    closed = False
    """Never closed: a `RequestOwner` that is always there for its answers."""

    def __init__(
        self,
        options: ModbusOptions,
        policy: ModbusGatewayPolicy,
        dispatch: Dispatch,
        pool: PoolState,
        *,
        clock: Clock,
        log: logging.LoggerAdapter[logging.Logger],
        events: Counter[str],
    ) -> None:
        self._policy = policy
        self._dispatch = dispatch
        self._pool = pool
        self._clock = clock
        self._log = log
        self._events = events
        self._points = options.point
        self._ttl = options.cache_ttl
        self._merge_gap = options.poll_merge_gap
        self._max_registers = options.poll_max_registers
        self._reads = [
            _Scheduled(read, 0.0)
            for read in plan_reads(options.poll, options.poll_merge_gap, options.poll_max_registers)
        ]
        self._timer: TimerHandle | None = None
        self._running = False
        self._to_scan = list(options.sunspec)
        """SunSpec units not scanned yet."""
        self._scan: SunSpecScan | None = None
        self._scan_due = 0.0
        self.devices: dict[int, SunSpecDevice] = {}
        """The SunSpec devices found, by unit."""

    @property
    def reads(self) -> list[PollRead]:
        """What it reads now (merged reads the device refused are split)."""
        return [scheduled.read for scheduled in self._reads]

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        """Begin: every read (and a scan) falls due at once (once a target connection
        is up)."""
        if self._running or not (self._reads or self._to_scan):
            return
        self._running = True
        now = self._clock.time()
        for scheduled in self._reads:
            scheduled.due = now
        self._scan_due = now
        self._arm(now)

    def stop(self) -> None:
        """Stop polling (a reload, shutdown); reads on their way are still answered."""
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._scan is not None:
            self._scan.stop()
            self._scan = None

    def _arm(self, now: float) -> None:
        if not self._running:
            return
        dues = [scheduled.due for scheduled in self._reads]
        if self._to_scan and self._scan is None:
            dues.append(self._scan_due)
        if not dues:
            return
        due = min(dues)
        timer = self._timer
        if timer is not None:
            if timer.when() <= due:
                return
            timer.cancel()
        self._timer = self._clock.call_at(max(due, now), self._tick)

    def _tick(self) -> None:
        self._timer = None
        if not self._running:
            return
        now = self._clock.time()
        pool = self._pool
        up = pool.connections > 0 and not pool.closing
        if self._to_scan and self._scan is None and self._scan_due <= now:
            if up:
                self._start_scan()
            else:
                self._scan_due = now + 1.0  # look again once the connection may be up
        for scheduled in list(self._reads):
            if scheduled.due > now:
                continue
            # The next time it falls due, on its own beat (skipping beats it missed).
            missed = int((now - scheduled.due) // scheduled.every)
            scheduled.due += (missed + 1) * scheduled.every
            if not up:
                continue  # paused: the pool's own reconnecting brings the target back
            if scheduled.request is not None:
                scheduled.late += 1
                self._events["late_polls"] += 1
                continue
            self._submit(scheduled, now)
        self._arm(now)

    def _submit(self, scheduled: _Scheduled, now: float) -> None:
        read = scheduled.read
        payload = read_request(0, read.unit, read.address, read.count, read.function)
        request = Request(self, payload, now)
        request.priority = Priority.BACKGROUND
        scheduled.request = request
        self._events["poll_reads"] += 1
        if read.merged:
            self._events["merged_reads"] += 1
        self._dispatch.submit(request)

    # ------------------------------------------------------------------ SunSpec

    def _start_scan(self) -> None:
        unit = self._to_scan[0]
        self._scan = SunSpecScan(self._dispatch, self._clock, unit, self._scanned)
        self._scan.start()

    def _scanned(self, device: SunSpecDevice | None, error: str) -> None:
        scan = self._scan
        self._scan = None
        if scan is None:
            return
        now = self._clock.time()
        unit = scan.unit
        if scan.unanswered:
            self._scan_due = now + SCAN_RETRY
            self._log.warning(
                "SunSpec scan of unit %d: %s; trying again in %s",
                unit,
                error,
                format_duration(SCAN_RETRY),
            )
            self._arm(now)
            return
        self._to_scan.remove(unit)
        if device is None:
            self._log.warning("SunSpec scan of unit %d: %s; nothing published", unit, error)
        else:
            self.devices[unit] = device
            prefix = "" if unit == 1 else f"u{unit}_"
            added = self._add_points(model_points(device, every_for(self._ttl), prefix=prefix), now)
            self._log.log(NOTICE, "%s", scan_summary(device, added))
        self._scan_due = now
        self._arm(now)

    def _add_points(self, found: list[Point], now: float) -> int:
        """Poll and publish the points a scan found (but a declared point keeps its
        name)."""
        taken = {point.name for point in self._points}
        fresh = [point for point in found if point.name not in taken]
        if len(fresh) < len(found):
            self._log.warning(
                "SunSpec: %d point name(s) are declared already; those keep their declaration",
                len(found) - len(fresh),
            )
        self._points = (*self._points, *fresh)
        reads = plan_reads([point.poll() for point in fresh], self._merge_gap, self._max_registers)
        self._reads.extend(_Scheduled(read, now) for read in reads)
        return len(fresh)

    # ------------------------------------------------------------------ RequestOwner

    def request_done(self, request: Request) -> None:
        scheduled = next((each for each in self._reads if each.request is request), None)
        if scheduled is None:
            return  # a read the plan no longer has
        scheduled.request = None
        answer = request.answer
        now = self._clock.time()
        if request.close_client or len(answer) < 9:
            scheduled.last_error = "no answer"
            return
        if not answer[7] & EXCEPTION_FLAG:
            scheduled.last_read = now
            scheduled.last_error = ""
            if scheduled.refused:
                scheduled.refused = False
                scheduled.every = scheduled.read.every
                scheduled.due = min(scheduled.due, now + scheduled.every)
                self._arm(now)
                self._log.log(NOTICE, "poll of %s: the device answers it again", scheduled.read)
            return
        code = answer[8]
        name = EXCEPTION_NAMES.get(code)
        scheduled.last_error = f"exception 0x{code:02x}" + (f" ({name})" if name else "")
        if code in NOT_ANSWERED:
            return
        read = scheduled.read
        if read.merged and code == ExceptionCode.ILLEGAL_DATA_ADDRESS:
            self._split(scheduled, now)
            return
        self._events["refused_ranges"] += 1
        if not scheduled.refused:
            scheduled.refused = True
            scheduled.every = read.every * REFUSED_SLOWDOWN
            scheduled.due = now + scheduled.every
            self._log.log(
                NOTICE,
                "poll of %s: the device refuses it (%s); trying again every %s",
                read,
                scheduled.last_error,
                format_duration(scheduled.every),
            )
            self._arm(now)

    def _split(self, scheduled: _Scheduled, now: float) -> None:
        """The device refused a merged read with 0x02: read its parts separately."""
        read = scheduled.read
        self._events["refused_ranges"] += 1
        index = self._reads.index(scheduled)
        parts = [_Scheduled(part, now) for part in read.parts]
        self._reads[index : index + 1] = parts
        self._log.log(
            NOTICE,
            "poll of %s: the device refuses the merged read (exception 0x02, a hole in its "
            "register map?); reading its %d ranges separately from now on",
            read,
            len(parts),
        )
        self._arm(now)

    def pause_for_queue(self) -> None:
        """Nothing to pause: the poller never has more than its reads waiting."""

    def resume_for_queue(self) -> None:
        """Nothing to resume."""

    # ------------------------------------------------------------------ what it holds

    def gauges(self, now: float) -> dict[str, float]:
        image = self._policy.image
        return {"image_values": float(image.values_held(now)) if image is not None else 0.0}

    def rows(self, now: float) -> list[dict[str, Any]]:
        """Each polled read: its range, interval, the age of its oldest value, its last
        error, and how often it came round late."""
        image = self._policy.image
        rows: list[dict[str, Any]] = []
        for scheduled in self._reads:
            read = scheduled.read
            age = (
                image.oldest_age(read.unit, read.function, read.address, read.count, now)
                if image is not None
                else None
            )
            rows.append(
                {
                    "unit": read.unit,
                    "table": TABLE_NAMES[read.function],
                    "address": read.address,
                    "count": read.count,
                    "every": scheduled.every,
                    "merged": len(read.parts),
                    "oldest_age": None if age is None else round(age, 3),
                    "last_error": scheduled.last_error or None,
                    "late": scheduled.late,
                    "waiting": scheduled.request is not None
                    and scheduled.request.state != RequestState.DONE,
                }
            )
        return rows

    def point_infos(self) -> list[PointInfo]:
        return [
            PointInfo(
                name=point.name,
                label=point.label or point.name,
                kind="bool"
                if point.table in BIT_TABLES or point.type == "bool"
                else "number"
                if point.numeric
                else "text",
                unit_of_measurement=point.unit_of_measurement,
                device_class=point.device_class,
                state_class=point.state_class,
                every=point.every,
                writable=point.writable,
                minimum=point.minimum,
                maximum=point.maximum,
                step=point.step(),
            )
            for point in self._points
        ]

    def device_info(self) -> dict[str, str]:
        """What the first SunSpec device found says it is."""
        for device in self.devices.values():
            return device.info()
        return {}

    def command(self, name: str, text: str, now: float) -> bytes | str:
        """A write of point `name` (see `Background.command`); bool points take
        on/off, true/false, 1/0."""
        point = next((point for point in self._points if point.name == name), None)
        if point is None:
            return f"no point {name!r}"
        if not point.writable:
            return f"point {name!r} is not writable"
        word = text.strip().lower()
        value: float | bool
        if point.table in BIT_TABLES or point.type == "bool":
            if word not in _TRUE | _FALSE:
                return f"{text!r} is not on or off"
            value = word in _TRUE
        else:
            try:
                value = float(word)
            except ValueError:
                return f"{text!r} is not a number"
            if not math.isfinite(value):
                return f"{text!r} is not a number"
            if point.minimum is not None and value < point.minimum:
                return f"{value:g} is below its min {point.minimum:g}"
            if point.maximum is not None and value > point.maximum:
                return f"{value:g} is above its max {point.maximum:g}"
        factor: float | None = None
        if isinstance(point.scale, str):
            scale_reading = self.readings(now).get(point.scale)
            held = None if scale_reading is None else scale_reading.value
            factor = float(held) if isinstance(held, int | float) else None
        try:
            data = point.encode(value, factor)
        except ValueError as exc:
            return str(exc)
        return write_request(point.unit, point.table, point.address, data)

    def command_refusal(self, answer: bytes) -> str:
        if len(answer) < 9:
            return "no answer"
        if answer[7] & EXCEPTION_FLAG:
            code = answer[8]
            name = EXCEPTION_NAMES.get(code)
            return f"exception 0x{code:02x}" + (f" ({name})" if name else "")
        return ""

    def readings(self, now: float) -> dict[str, Reading]:
        """Each point's value from the image: decoded from ONE device answer, scaled
        (by its scale factor point's value, where it names one)."""
        image = self._policy.image
        if image is None or not self._points:
            return {}
        raw: dict[str, tuple[int | float | bool | str | None, float | None]] = {}
        for point in self._points:
            found = image.values(
                point.unit, point.function, point.address, point.count, now, image.keep
            )
            raw[point.name] = (point.raw(found[0]), found[1]) if found else (None, None)
        readings = {}
        for point in self._points:
            value, stamp = raw[point.name]
            factor: float | None = None
            if isinstance(point.scale, str):
                scale_value = raw.get(point.scale, (None, None))[0]
                factor = float(scale_value) if isinstance(scale_value, int) else None
            scaled = point.scaled(value, factor)
            age = None if stamp is None else max(0.0, now - stamp)
            if scaled is None or age is None:
                quality = "unknown"
            else:
                quality = "fresh" if age < self._ttl else "stale"
            readings[point.name] = Reading(scaled, point.unit_of_measurement, age, quality)
        return readings
