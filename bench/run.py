"""Run the whole benchmark table of issue 4 and print the ratios as Markdown.

    .venv/bin/python bench/run.py               # full run, about 5 minutes
    .venv/bin/python bench/run.py --quick       # smoke run, under 2 minutes
    .venv/bin/python bench/run.py --only a,c --dur 5s

Sections (see bench/README.md for what each measures and the goals):
  a  main table: echo, modbus, http, iso8583 x 1, 16, 128 clients, one target connection
  b  slow device (answers in 5 ms), 16 clients: 1 target connection vs --max-connections 4
  c  pipelining: --max-inflight 16, 128 clients, one target connection
  d  the modbus-proxy package from PyPI (installed into its own venv under ~/.cache)
  e  idle clients: resident memory with 1,000 and 10,000 connected clients
  f  memory under load: 128 busy clients for --soak-seconds, RSS sampled every 5 s
  g  where the time goes: CPU time per answer on each core, direct and through the project

Sections a-d call ../shared/bench/compare.sh (the instrument of record: Go load generator
and target, proxy pinned to CPU 1, load generator and target to CPU 0) and read its
results.jsonl. When the Go load generator has not been built, bench/pyload.py and
`tcp-multiplexer example-server` stand in for it, with a warning: a Python load generator
saturates its core before the multiplexer does, so those ratios understate.

Everything listens on 127.0.0.1 only, every step is bounded in time, and every process
started here runs in its own process group and is stopped again, also on Ctrl-C or
failure. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import errno
import json
import os
import platform
import re
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

REPO: Final = Path(__file__).resolve().parent.parent
CACHE: Final = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tcp-multiplexer-bench"
)
DEFAULT_COMPARE: Final = REPO.parent / "shared" / "bench" / "compare.sh"
DEFAULT_LOADGEN: Final = CACHE / "loadgen"
MODBUS_PROXY_VENV: Final = CACHE / "modbus-proxy-venv"
PYLOAD: Final = REPO / "bench" / "pyload.py"
LOOPBACK: Final = "127.0.0.1"
PROXY_CPU: Final = 1
LOAD_CPU: Final = 0
FIRST_PORT: Final = 19600
"""Ports for sections e and f are taken from here up, below the ephemeral range."""

SLOW_DELAY: Final = "5ms"
SLOW_CLIENTS: Final = 16
SLOW_POOL: Final = 4
INFLIGHT: Final = 16
INFLIGHT_CLIENTS: Final = 128
SOAK_CLIENTS: Final = 128
SOAK_SAMPLE_EVERY: Final = 5.0
REQUEST_TIMEOUT: Final = "2s"

GOAL_1CONN: Final = {1: 0.30, 16: 0.60, 128: 0.60}
GOAL_P99_US: Final = {16: 1500, 128: 10000}
GOAL_VS_ECHO: Final = 0.8
GOAL_POOL: Final = 3.5
GOAL_INFLIGHT: Final = 1.0
GOAL_VS_MODBUS_PROXY: Final = 6.0
GOAL_IDLE_MB: Final = 40.0
MUX_NOFILE_SOFT: Final = 1024
"""Soft fd limit the multiplexer is started with in section e, like a stock desktop
(systemd's default): 10,000 clients then need the multiplexer to raise it itself."""

Row = dict[str, Any]


class Interrupted(Exception):
    """SIGTERM or SIGHUP arrived: stop everything as for Ctrl-C."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 3s, 500ms, 1.5)")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value / 1000 if unit == "ms" else value * 60 if unit == "m" else value


def go_duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


# ---------------------------------------------------------------- processes


def proc_children(parent: int) -> list[tuple[int, int, str]]:
    """(pid, pgid, state) of every process whose parent is `parent`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == parent:
            found.append((int(entry), int(fields[2]), fields[0]))
    return found


class Processes:
    """Every process this script starts, each in a session (process group) of its own.

    The script also makes itself a child subreaper, so that processes started by
    compare.sh (which puts its target and proxy in sessions of their own) are
    re-parented to it if compare.sh dies, and can be found and stopped."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[bytes]] = []
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        self.taskset = shutil.which("taskset")

    def start(
        self,
        argv: Sequence[str],
        *,
        log_path: Path | None = None,
        stdout_path: Path | None = None,
        cpu: int | None = None,
        env: dict[str, str] | None = None,
        stderr_inherit: bool = False,
        nofile_soft: int | None = None,
    ) -> subprocess.Popen[bytes]:
        if cpu is not None and self.taskset:
            argv = [self.taskset, "-c", str(cpu), *argv]
        opened: list[IO[bytes]] = []
        out: IO[bytes] | int = subprocess.DEVNULL
        err: IO[bytes] | int | None = None
        if log_path is not None:
            opened.append(log_path.open("wb"))
            out = err = opened[-1]
        if stdout_path is not None:
            opened.append(stdout_path.open("wb"))
            out = opened[-1]
        if stderr_inherit:
            err = None
        elif err is None:
            err = subprocess.DEVNULL
        preexec: Callable[[], None] | None = None
        if nofile_soft is not None:
            soft = nofile_soft

            def preexec() -> None:
                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))

        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
                preexec_fn=preexec,
            )
        finally:
            for f in opened:  # the child has its own copies
                f.close()
        self.live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 3.0) -> int | None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        if proc in self.live:
            self.live.remove(proc)
        self.sweep()
        return proc.returncode

    def sweep(self) -> None:
        """Stop processes re-parented to this script (orphans of what it started)."""
        me = os.getpid()
        mine = {p.pid for p in self.live}
        for _ in range(4):
            orphans = [c for c in proc_children(me) if c[0] not in mine]
            if not orphans:
                return
            for pid, pgid, state in orphans:
                if state != "Z":
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        if pgid == pid:
                            os.killpg(pid, signal.SIGTERM)
                        else:
                            os.kill(pid, signal.SIGTERM)
            time.sleep(0.3)
            for pid, pgid, _state in orphans:
                with contextlib.suppress(ChildProcessError):
                    done, _ = os.waitpid(pid, os.WNOHANG)
                    if done == 0:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            if pgid == pid:
                                os.killpg(pid, signal.SIGKILL)
                            else:
                                os.kill(pid, signal.SIGKILL)
                        time.sleep(0.05)
                        with contextlib.suppress(ChildProcessError):
                            os.waitpid(pid, os.WNOHANG)

    def stop_all(self) -> None:
        for proc in reversed(list(self.live)):
            self.stop(proc, grace=15.0)
        self.sweep()


# ---------------------------------------------------------------- /proc helpers


def listening(port: int) -> bool:
    want = f":{port:04X}"
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A" and parts[1].endswith(want):
                return True
    return False


def wait_listen(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def cpu_jiffies(cpus: Sequence[int]) -> dict[int, tuple[int, int]]:
    """(busy, total) clock ticks since boot per CPU, from /proc/stat (idle and iowait
    are not busy; guest time is already inside user)."""
    found: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                continue
            ticks = [int(value) for value in values[:8]]
            found[int(name[3:])] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
    return found


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def nofile_limits(pid: int) -> str:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    return "?"


class Ports:
    """Free loopback ports from FIRST_PORT up (below the ephemeral range)."""

    def __init__(self) -> None:
        self.next = FIRST_PORT

    def take(self) -> int:
        while self.next < 32000:
            port = self.next
            self.next += 1
            if listening(port):
                continue
            with socket.socket() as s:
                try:
                    s.bind((LOOPBACK, port))
                except OSError:
                    continue
            return port
        raise RuntimeError("no free port")


# ---------------------------------------------------------------- formatting


def fnum(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def frps(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def find(rows: Sequence[Row], **want: Any) -> Row | None:
    for r in rows:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def target_share(r: Row | None) -> float | None:
    """Requests the target saw per answer the clients got (below 1: reads coalesced)."""
    if r is None or "target_requests" not in r:
        return None
    asked = int(r.get("requests", 0)) + int(r.get("warmup_requests", 0))
    return ratio(float(r["target_requests"]), float(asked))


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values measured (None where a run gave none)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def fspread(values: Sequence[float | None]) -> str:
    """Median, and the range over the runs when there were several: 0.61 (0.58-0.66)."""
    known = [v for v in values if v is not None]
    if len(known) < 2:
        return fnum(median(known))
    return f"{fnum(median(known))} ({min(known):.2f}-{max(known):.2f})"


def err_sum(rows: Iterable[Row | None]) -> str:
    known = [r for r in rows if r is not None]
    if not known:
        return "-"
    return f"{sum(int(r['errors']) for r in known)}/{sum(int(r['mismatches']) for r in known)}"


def rps_of(r: Row | None) -> float | None:
    return None if r is None else float(r.get("rps", 0.0))


def one_conn_rps(rows: Sequence[Row]) -> float | None:
    """The one-connection limit of a run: one client on one direct connection."""
    return rps_of(find(rows, case="main", variant="direct", clients=1))


# ---------------------------------------------------------------- plan


@dataclass
class Plan:
    table: list[tuple[str, list[int]]]
    slow_modes: list[str]
    inflight_modes: list[str]
    proxy_clients: list[int]
    idle_counts: list[int]
    soak_seconds: float
    dur: float
    warmup: float
    repeat: int


def make_plan(args: argparse.Namespace, go: bool) -> Plan:
    if args.quick:
        table = [("echo", [1, 16, 128]), ("modbus", [1, 16, 128])]
        table += [("http", [1, 16]), ("iso8583", [1, 16])]
        slow_modes = ["modbus"]
        dur, warmup, soak = 1.0, 0.3, 15.0
    else:
        table = [(m, [1, 16, 128]) for m in ("echo", "modbus", "http", "iso8583")]
        slow_modes = ["echo", "modbus"]
        dur, warmup, soak = 3.0, 0.5, 60.0
    if not go:  # pyload speaks echo and modbus only
        table = [(m, c) for m, c in table if m in ("echo", "modbus")]
    return Plan(
        table=table,
        slow_modes=slow_modes,
        inflight_modes=["echo", "modbus"],
        proxy_clients=[1, 16, 128],
        idle_counts=[1000, 10000],
        soak_seconds=args.soak_seconds if args.soak_seconds is not None else soak,
        dur=args.dur if args.dur is not None else dur,
        warmup=warmup,
        repeat=args.repeat if args.repeat is not None else (1 if args.quick else 3),
    )


# ---------------------------------------------------------------- the runner


@dataclass
class Bench:
    args: argparse.Namespace
    out: Path
    procs: Processes
    plan: Plan
    go: bool
    loadgen: Path
    compare: Path
    mux: Path
    modbus_proxy: Path | None = None
    modbus_proxy_note: str = ""
    ports: Ports = field(default_factory=Ports)
    sections: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    rows_a: dict[str, list[list[Row]]] = field(default_factory=dict)
    """Section a's rows per mode, one list per run."""
    raw: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------ helpers

    def project_template(self, flags: str = "") -> str:
        cmd = f"{shlex.quote(str(self.mux))} server -p {{proto}} -t {{target}} -l {{listen}}"
        return f"{cmd} {flags}".strip()

    def check_rows(self, where: str, rows: Sequence[Row]) -> None:
        for r in rows:
            what = f"{where}: {r.get('label')} c={r.get('clients')}"
            if r.get("errors", 0) or r.get("mismatches", 0):
                detail = r.get("first_mismatch") or r.get("first_error") or ""
                self.problems.append(
                    f"{what}: errors={r.get('errors')} mismatches={r.get('mismatches')}"
                    + (f" ({str(detail)[:120]})" if detail else "")
                )
            if r.get("proxy_alive_at_end") is False:
                self.problems.append(f"{what}: the proxy had exited before the run ended")
            if r.get("loadgen_rc", 0):
                self.problems.append(f"{what}: load generator exit code {r.get('loadgen_rc')}")

    def table_run(
        self,
        sub: str,
        mode: str,
        clients: Sequence[int],
        variants: Sequence[str],
        *,
        flags: str = "",
        name: str = "project",
        slow: bool = False,
    ) -> list[Row]:
        """One compare.sh invocation (or its Python stand-in); returns its rows."""
        out = self.out / sub
        out.mkdir(parents=True, exist_ok=True)
        log(f"--- {sub}: {mode} clients={' '.join(map(str, clients))} {' '.join(variants)}")
        if self.go:
            rows = self.compare_sh(out, mode, clients, variants, flags, name, slow)
        else:
            rows = self.py_table(out, mode, clients, variants, flags, name, slow)
        self.check_rows(sub, rows)
        self.raw[sub] = rows
        return rows

    def compare_sh(
        self,
        out: Path,
        mode: str,
        clients: Sequence[int],
        variants: Sequence[str],
        flags: str,
        name: str,
        slow: bool,
    ) -> list[Row]:
        env = dict(os.environ)
        env.pop("MODBUS_PROXY", None)
        env.update(
            LOADGEN=str(self.loadgen),
            DUR=go_duration(self.plan.dur),
            WARMUP=go_duration(self.plan.warmup),
            TIMEOUT=REQUEST_TIMEOUT,
            OUT=str(out),
            SLOW="1" if slow else "0",
            SLOW_DELAY=SLOW_DELAY,
            SLOW_CLIENTS=str(SLOW_CLIENTS),
            SLOW_POOL=str(SLOW_POOL),
            PROJECT_POOL_FLAGS=f"--max-connections {SLOW_POOL}",
            TARGET_MAX_CONNS="1",
            VARIANTS=" ".join(variants),
            PROJECT_CMD=self.project_template(flags),
            PROJECT_NAME=name,
            START_TIMEOUT="20",
            PROXY_CPU=str(PROXY_CPU),
            LOAD_CPU=str(LOAD_CPU),
        )
        if self.modbus_proxy is not None:
            env["MODBUS_PROXY"] = str(self.modbus_proxy)
        results = out / "results.jsonl"
        results.unlink(missing_ok=True)
        runs = len(clients) * len(variants) + (6 if slow else 0)
        bound = runs * (self.plan.dur + self.plan.warmup + 40) + 30
        proc = self.procs.start(
            ["bash", str(self.compare), mode, *map(str, clients)],
            stdout_path=out / "compare.txt",
            env=env,
            stderr_inherit=True,
        )
        try:
            proc.wait(bound)
        except subprocess.TimeoutExpired:
            self.problems.append(f"{out.name}: compare.sh took over {bound:.0f}s and was stopped")
        self.procs.stop(proc, grace=15.0)
        if proc.returncode not in (0, None):
            self.problems.append(f"{out.name}: compare.sh exit code {proc.returncode}")
        if not results.exists():
            return []
        return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]

    # ------------------------------------------------------------ Python stand-in

    def py_table(
        self,
        out: Path,
        mode: str,
        clients: Sequence[int],
        variants: Sequence[str],
        flags: str,
        name: str,
        slow: bool,
    ) -> list[Row]:
        """compare.sh's cases, with example-server as target and pyload as clients."""
        (out / "logs").mkdir(parents=True, exist_ok=True)
        rows: list[Row] = []
        for c in clients:
            if "direct" in variants:
                rows.append(self.py_case(out, mode, "main", "direct", "direct", c, "0", 0, 1, ""))
            if mode == "modbus" and "modbus-proxy" in variants and self.modbus_proxy:
                rows.append(
                    self.py_case(
                        out, mode, "main", "modbus-proxy", "modbus-proxy", c, "0", 1, 1, ""
                    )
                )
            if "project" in variants:
                rows.append(self.py_case(out, mode, "main", "project", name, c, "0", 1, 1, flags))
        if slow:
            sc = SLOW_CLIENTS
            d = SLOW_DELAY
            rows.append(self.py_case(out, mode, "slow", "direct", "direct-c1", 1, d, 0, 1, ""))
            rows.append(self.py_case(out, mode, "slow", "direct", "direct", sc, d, 0, 1, ""))
            if "project" in variants:
                rows.append(self.py_case(out, mode, "slow", "project", name, sc, d, 1, 1, flags))
                pool_flags = f"{flags} --max-connections {SLOW_POOL}".strip()
                rows.append(
                    self.py_case(
                        out,
                        mode,
                        "slow",
                        "project",
                        f"{name}-pool{SLOW_POOL}",
                        sc,
                        d,
                        SLOW_POOL,
                        SLOW_POOL,
                        pool_flags,
                    )
                )
        with (out / "results.jsonl").open("w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        return rows

    def py_case(
        self,
        out: Path,
        mode: str,
        case: str,
        variant: str,
        label: str,
        c: int,
        delay: str,
        tmax: int,
        pool: int,
        flags: str,
    ) -> Row:
        tag = f"{case}-{label}-c{c}"
        tport, pport = self.ports.take(), self.ports.take()
        target = self.procs.start(
            [
                str(self.mux),
                "example-server",
                mode,
                "-l",
                f"{LOOPBACK}:{tport}",
                "--max-connections",
                str(tmax),
                "--delay",
                delay if delay != "0" else "0",
            ],
            log_path=out / "logs" / f"{tag}.target.log",
            cpu=LOAD_CPU,
        )
        proxy: subprocess.Popen[bytes] | None = None
        row: Row = {"requests": 0, "errors": -1, "mismatches": 0, "rps": 0.0}
        row |= {"p50_us": 0, "p99_us": 0, "clients": c}
        try:
            if not wait_listen(tport, 15, target):
                self.problems.append(f"{tag}: example-server did not start")
                return self.py_row(row, case, variant, label, delay, tmax, pool, True, -1)
            addr_port = tport
            if variant == "project":
                argv = [str(self.mux), "server", "-p", mode, "-t", f"{LOOPBACK}:{tport}"]
                argv += ["-l", f"{LOOPBACK}:{pport}", *shlex.split(flags)]
                proxy = self.procs.start(
                    argv, log_path=out / "logs" / f"{tag}.proxy.log", cpu=PROXY_CPU
                )
                addr_port = pport
            elif variant == "modbus-proxy" and self.modbus_proxy is not None:
                argv = [str(self.modbus_proxy), "-b", f"tcp://{LOOPBACK}:{pport}"]
                argv += ["--modbus", f"tcp://{LOOPBACK}:{tport}"]
                proxy = self.procs.start(
                    argv, log_path=out / "logs" / f"{tag}.proxy.log", cpu=PROXY_CPU
                )
                addr_port = pport
            if proxy is not None:
                if not wait_listen(pport, 20, proxy):
                    self.problems.append(f"{tag}: proxy did not start listening")
                    return self.py_row(row, case, variant, label, delay, tmax, pool, False, -1)
                time.sleep(0.3)
            python = REPO / ".venv" / "bin" / "python"
            load = self.procs.start(
                [
                    str(python if python.exists() else sys.executable),
                    str(PYLOAD),
                    "--mode",
                    mode,
                    "--addr",
                    f"{LOOPBACK}:{addr_port}",
                    "-c",
                    str(c),
                    "-d",
                    str(self.plan.dur),
                    "--warmup",
                    str(self.plan.warmup),
                    "--label",
                    label,
                    "--values",
                    "example",
                ],
                stdout_path=out / "logs" / f"{tag}.load.json",
                log_path=out / "logs" / f"{tag}.load.err",
                cpu=LOAD_CPU,
            )
            rc: int | None
            try:
                rc = load.wait(self.plan.dur + self.plan.warmup + 30)
            except subprocess.TimeoutExpired:
                rc = None
            self.procs.stop(load)
            alive = proxy is None or proxy.poll() is None
            text = (out / "logs" / f"{tag}.load.json").read_text().strip()
            if rc == 0 and text:
                row = json.loads(text.splitlines()[-1])
            log(
                f"  {label:<18} c={c:<4} rps={row['rps']:<9} p50={row['p50_us']:<6} "
                f"p99={row['p99_us']:<6} err={row['errors']} mism={row['mismatches']}"
            )
            rc_out = -1 if rc is None else rc
            return self.py_row(row, case, variant, label, delay, tmax, pool, alive, rc_out)
        finally:
            if proxy is not None:
                self.procs.stop(proxy)
            self.procs.stop(target)
            with contextlib.suppress(OSError):
                text = (out / "logs" / f"{tag}.target.log").read_text()
                stats = re.findall(r"accepted=(\d+) rejected=(\d+) requests=(\d+)", text)
                if stats:
                    keys = ("accepted", "rejected", "requests")
                    for key, value in zip(keys, stats[-1], strict=True):
                        row["target_" + key] = int(value)

    @staticmethod
    def py_row(
        row: Row,
        case: str,
        variant: str,
        label: str,
        delay: str,
        tmax: int,
        pool: int,
        alive: bool,
        rc: int,
    ) -> Row:
        row.update(
            case=case,
            variant=variant,
            label=label,
            delay=delay,
            target_max_conns=tmax,
            pool=pool,
            proxy_alive_at_end=alive,
            loadgen_rc=rc,
        )
        return row

    # ------------------------------------------------------------ sections

    def section_a(self) -> str:
        parts = [
            "## a. Main table: one target connection, one request at a time",
            "",
            "`/1conn` = project answers/s divided by one client on one direct connection "
            "(the one-connection limit) of the same mode and run. Goals: >= 0.30 with 1 "
            "client, >= 0.60 with 16 and 128; p99 <= 1.5 ms with 16 clients, <= 10 ms "
            "with 128. `target req/answer` = requests the target saw per answer the clients "
            "got: below 1.00, identical reads in flight together were coalesced (modbus), so "
            "the target did less work than the clients asked for.",
            "",
        ]
        repeat = self.plan.repeat
        if repeat > 1:
            parts += [
                f"Each mode ran {repeat} times, one after the other. Every ratio is taken "
                "within one run (project and direct side by side); the table shows the "
                "median over the runs and, in brackets, the lowest and highest. Answers/s "
                "and latencies are medians; errors are summed over the runs.",
                "",
            ]
        body = []
        for mode, clients in self.plan.table:
            variants = ["direct", "project"]
            if mode == "modbus" and self.modbus_proxy is not None:
                variants.insert(1, "modbus-proxy")
            runs = [
                self.table_run(
                    f"a-{mode}" + (f"-run{index + 1}" if repeat > 1 else ""),
                    mode,
                    clients,
                    variants,
                )
                for index in range(repeat)
            ]
            self.rows_a[mode] = runs
            ones = [one_conn_rps(rows) for rows in runs]
            for c in clients:
                ds = [find(rows, case="main", variant="direct", clients=c) for rows in runs]
                ps = [find(rows, case="main", variant="project", clients=c) for rows in runs]
                r1s = [ratio(rps_of(p), one) for p, one in zip(ps, ones, strict=True)]
                r1 = median(r1s)
                goal = GOAL_1CONN.get(c)
                p99 = median(None if p is None else float(p["p99_us"]) for p in ps)
                p99_goal = GOAL_P99_US.get(c)
                p50 = median(None if p is None else float(p["p50_us"]) for p in ps)
                body.append(
                    [
                        mode,
                        str(c),
                        frps(median(ones)),
                        frps(median(rps_of(d) for d in ds)),
                        frps(median(rps_of(p) for p in ps)),
                        fnum(
                            median(ratio(rps_of(p), rps_of(d)) for p, d in zip(ps, ds, strict=True))
                        ),
                        fspread(r1s),
                        f">= {goal:.2f}" if goal else "-",
                        met(None if goal is None or r1 is None else r1 >= goal),
                        "-" if p50 is None else f"{p50:.0f}",
                        "-" if p99 is None else f"{p99:.0f}",
                        f"<= {p99_goal}" if p99_goal else "-",
                        met(None if p99_goal is None or p99 is None else p99 <= p99_goal),
                        err_sum(ps),
                        fnum(median(target_share(p) for p in ps)),
                    ]
                )
        headers = ["mode", "clients", "1conn rps", "direct rps", "project rps", "/direct"]
        headers += ["/1conn", "goal", "met", "p50 us", "p99 us", "p99 goal", "met"]
        headers += ["err/mism", "target req/answer"]
        parts.append(md_table(headers, body))
        echo_runs = self.rows_a.get("echo")
        others = [m for m in ("http", "iso8583") if m in self.rows_a]
        if echo_runs and others:
            parts += [
                "",
                "### http and iso8583 against echo",
                "",
                "Goal: at least 0.8 of the echo figures. `/1conn vs echo` = (project /1conn "
                "of the mode) / (project /1conn of echo), each against its own direct "
                "one-connection limit (the goal's measure), run k of the mode against run k "
                "of echo; `rps vs echo` compares raw answers/s, which also includes the Go "
                "target's own cost per protocol.",
                "",
            ]
            body2 = []
            for mode, clients in self.plan.table:
                if mode not in others:
                    continue
                pairs = list(zip(self.rows_a[mode], echo_runs, strict=False))
                for c in clients:
                    mode_r1s, echo_r1s, rels, raw = [], [], [], []
                    for rows, echo in pairs:
                        prps = rps_of(find(rows, case="main", variant="project", clients=c))
                        erps = rps_of(find(echo, case="main", variant="project", clients=c))
                        mode_r1 = ratio(prps, one_conn_rps(rows))
                        echo_r1 = ratio(erps, one_conn_rps(echo))
                        mode_r1s.append(mode_r1)
                        echo_r1s.append(echo_r1)
                        rels.append(ratio(mode_r1, echo_r1))
                        raw.append(ratio(prps, erps))
                    rel = median(rels)
                    body2.append(
                        [
                            mode,
                            str(c),
                            fnum(median(mode_r1s)),
                            fnum(median(echo_r1s)),
                            fspread(rels),
                            fnum(median(raw)),
                            met(None if rel is None else rel >= GOAL_VS_ECHO),
                        ]
                    )
            parts.append(
                md_table(
                    [
                        *("mode", "clients", "/1conn", "echo /1conn", "/1conn vs echo"),
                        *("rps vs echo", "met (>= 0.8)"),
                    ],
                    body2,
                )
            )
        return "\n".join(parts)

    def section_b(self) -> str:
        parts = [
            "## b. Slow device: target answers in 5 ms, 16 clients",
            "",
            f"Project with one target connection vs `--max-connections {SLOW_POOL}` against "
            f"a target accepting {SLOW_POOL}. Goal: pool/1-connection >= {GOAL_POOL}. "
            f"Ceiling: {SLOW_POOL} connections x 200/s = 800/s.",
            "",
        ]
        body = []
        for mode in self.plan.slow_modes:
            rows = self.table_run(f"b-{mode}", mode, [1], ["direct", "project"], slow=True)
            slow = [r for r in rows if r.get("case") == "slow"]
            d1 = find(slow, label="direct-c1")
            d16 = find(slow, label="direct")
            p1 = find(slow, label="project")
            pp = find(slow, label=f"project-pool{SLOW_POOL}")
            rel = ratio(rps_of(pp), rps_of(p1))
            body.append(
                [
                    mode,
                    frps(rps_of(d1)),
                    frps(rps_of(d16)),
                    frps(rps_of(p1)),
                    frps(rps_of(pp)),
                    "-" if pp is None else str(pp.get("target_accepted", "-")),
                    "-" if pp is None else str(pp["p99_us"]),
                    fnum(rel),
                    met(None if rel is None else rel >= GOAL_POOL),
                ]
            )
        headers = ["mode", "direct c=1", "direct c=16", "project 1 conn", "project pool 4"]
        headers += ["pool: target conns", "pool p99 us", "pool / 1 conn", "met (>= 3.5)"]
        parts.append(md_table(headers, body))
        return "\n".join(parts)

    def section_c(self) -> str:
        parts = [
            f"## c. Pipelining: `--max-inflight {INFLIGHT}`, {INFLIGHT_CLIENTS} clients, "
            "one target connection",
            "",
            "Ratio to the one-connection limit (one client, one direct connection, same "
            f"run). Goal: >= {GOAL_INFLIGHT}.",
            "",
        ]
        body = []
        name = f"project-inflight{INFLIGHT}"
        for mode in self.plan.inflight_modes:
            rows = self.table_run(
                f"c-{mode}",
                mode,
                [1, INFLIGHT_CLIENTS],
                ["direct", "project"],
                flags=f"--max-inflight {INFLIGHT}",
                name=name,
            )
            one = rps_of(find(rows, variant="direct", clients=1))
            p1 = find(rows, variant="project", clients=1)
            pn = find(rows, variant="project", clients=INFLIGHT_CLIENTS)
            rel = ratio(rps_of(pn), one)
            body.append(
                [
                    mode,
                    frps(one),
                    frps(rps_of(p1)),
                    frps(rps_of(pn)),
                    fnum(rel),
                    "-" if pn is None else str(pn["p50_us"]),
                    "-" if pn is None else str(pn["p99_us"]),
                    "-" if pn is None else str(pn.get("target_accepted", "-")),
                    "-" if pn is None else f"{pn['errors']}/{pn['mismatches']}",
                    fnum(target_share(pn)),
                    met(None if rel is None else rel >= GOAL_INFLIGHT),
                ]
            )
        headers = ["mode", "1conn rps", "inflight c=1 rps", f"inflight c={INFLIGHT_CLIENTS} rps"]
        headers += ["/1conn", "p50 us", "p99 us", "target conns", "err/mism"]
        headers += ["target req/answer", "met (>= 1.0)"]
        parts.append(md_table(headers, body))
        return "\n".join(parts)

    def section_d(self) -> str:
        parts = [
            "## d. Against the modbus-proxy package (PyPI)",
            "",
            f"Same run, same target, one target connection. Goal: project / modbus-proxy >= "
            f"{GOAL_VS_MODBUS_PROXY:g}.",
            "",
        ]
        if self.modbus_proxy is None:
            parts.append(f"Not measured: {self.modbus_proxy_note}")
            return "\n".join(parts)
        if self.modbus_proxy_note:
            parts += [self.modbus_proxy_note, ""]
        runs = self.rows_a.get("modbus")
        if not runs or find(runs[0], variant="modbus-proxy") is None:
            runs = [
                self.table_run(
                    "d-modbus",
                    "modbus",
                    self.plan.proxy_clients,
                    ["direct", "modbus-proxy", "project"],
                )
            ]
        ones = [one_conn_rps(rows) for rows in runs]
        body = []
        for c in self.plan.proxy_clients:
            mps = [find(rows, case="main", variant="modbus-proxy", clients=c) for rows in runs]
            ps = [find(rows, case="main", variant="project", clients=c) for rows in runs]
            if not any(mps) and not any(ps):
                continue
            rels = [ratio(rps_of(p), rps_of(mp)) for p, mp in zip(ps, mps, strict=True)]
            rel = median(rels)
            mp_p99 = median(None if mp is None else float(mp["p99_us"]) for mp in mps)
            body.append(
                [
                    str(c),
                    frps(median(rps_of(mp) for mp in mps)),
                    fnum(median(ratio(rps_of(mp), one) for mp, one in zip(mps, ones, strict=True))),
                    "-" if mp_p99 is None else f"{mp_p99:.0f}",
                    err_sum(mps),
                    frps(median(rps_of(p) for p in ps)),
                    fspread(rels),
                    met(None if rel is None else rel >= GOAL_VS_MODBUS_PROXY),
                ]
            )
        headers = ["clients", "modbus-proxy rps", "modbus-proxy /1conn", "its p99 us"]
        headers += ["its err/mism", "project rps", "project / modbus-proxy", "met (>= 6)"]
        parts.append(md_table(headers, body))
        return "\n".join(parts)

    def start_target_mux(
        self,
        sub: str,
        mode: str,
        *,
        nofile_soft: int | None = None,
        flags: Sequence[str] = (),
    ) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], int]:
        out = self.out / sub
        out.mkdir(parents=True, exist_ok=True)
        tport, mport = self.ports.take(), self.ports.take()
        if self.go:
            argv = [str(self.loadgen), "serve", "-mode", mode, "-addr", f"{LOOPBACK}:{tport}"]
        else:
            argv = [str(self.mux), "example-server", mode, "-l", f"{LOOPBACK}:{tport}"]
        target = self.procs.start(argv, log_path=out / "target.log", cpu=LOAD_CPU)
        if not wait_listen(tport, 15, target):
            raise RuntimeError(f"{sub}: target did not start (see {out / 'target.log'})")
        argv = [str(self.mux), "server", "-p", mode, "-t", f"{LOOPBACK}:{tport}"]
        mux = self.procs.start(
            [*argv, "-l", f"{LOOPBACK}:{mport}", *flags],
            log_path=out / "multiplexer.log",
            cpu=PROXY_CPU,
            nofile_soft=nofile_soft,
        )
        if not wait_listen(mport, 20, mux):
            raise RuntimeError(f"{sub}: multiplexer did not start (see {out / 'multiplexer.log'})")
        return target, mux, mport

    def section_e(self) -> str:
        parts = [
            "## e. Idle clients: resident memory of the multiplexer",
            "",
            f"`tcp-multiplexer server -p echo`, started with a soft fd limit of "
            f"{MUX_NOFILE_SOFT} (a stock desktop's), so that 10,000 clients need it to raise "
            "its own. Clients are plain sockets opened by this script; each connection is "
            "then checked with one echo request. Goal: <= 40 MB resident with 1,000 "
            "clients; 10,000 must connect and be served.",
            "",
        ]
        target, mux, port = self.start_target_mux("e-idle", "echo", nofile_soft=MUX_NOFILE_SOFT)
        socks: list[socket.socket] = []
        body = []
        notes = []
        try:
            limits_mux = nofile_limits(mux.pid)
            probe, _ = connect_many(port, 1, 10)
            served, fail = echo_all(probe, 10, tag="warm")
            for s in probe:
                s.close()
            if served != 1:
                notes.append(f"warm-up request through the multiplexer failed: {fail}")
            time.sleep(1.0)
            base_rss = rss_mb(mux.pid)
            base_fds = fd_count(mux.pid)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = max(self.plan.idle_counts) + 256
            new_soft = hard
            if hard == resource.RLIM_INFINITY:
                new_soft = int(Path("/proc/sys/fs/nr_open").read_text())
            if new_soft > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
            notes.append(
                f"this script's fd limit: soft {soft} raised to {new_soft} (hard {hard}); "
                f"the multiplexer's soft/hard fd limit once listening: {limits_mux} "
                f"(started with soft {MUX_NOFILE_SOFT})"
            )
            if new_soft < want:
                notes.append(
                    f"the hard fd limit {hard} is too low for {max(self.plan.idle_counts)} "
                    "clients in this script; counts above it are capped"
                )
            notes.append(f"baseline after one request: {fnum(base_rss, 1)} MB, {base_fds} fds")
            for n in self.plan.idle_counts:
                n_eff = min(n, new_soft - 256)
                log(f"--- e: {n_eff} idle clients")
                new, errors = connect_many(port, n_eff - len(socks), 60)
                socks += new
                accepted = wait_fds(mux.pid, base_fds + len(socks), 30) - base_fds
                time.sleep(1.0)
                rss_idle = rss_mb(mux.pid)
                served, fail = echo_all(socks, 120, tag=f"n{n}")
                time.sleep(0.5)
                rss_after = rss_mb(mux.pid)
                alive = mux.poll() is None
                worst = max((x for x in (rss_idle, rss_after) if x is not None), default=None)
                ok: bool | None
                if n == 1000:
                    ok = worst is not None and worst <= GOAL_IDLE_MB and served == n
                    goal = f"<= {GOAL_IDLE_MB:g} MB, all served"
                else:
                    ok = served == n and len(socks) == n
                    goal = "all connect and are served"
                body.append(
                    [
                        f"{n:,}",
                        f"{len(socks):,}",
                        f"{accepted:,}",
                        f"{served:,}",
                        fnum(rss_idle, 1),
                        fnum(rss_after, 1),
                        fnum(None if worst is None or base_rss is None else worst - base_rss, 1),
                        goal,
                        met(ok and alive),
                    ]
                )
                if errors:
                    notes.append(f"{n}: {len(errors)} connects failed, first: {errors[0]}")
                if fail:
                    notes.append(f"{n}: {n - served} not served, first: {fail}")
                if not alive:
                    notes.append(f"{n}: the multiplexer exited (see e-idle/multiplexer.log)")
                    break
                self.raw.setdefault("e", []).append(
                    {"clients": n, "connected": len(socks), "accepted": accepted}
                    | {"served": served, "rss_idle_mb": rss_idle, "rss_after_mb": rss_after}
                )
        finally:
            for s in socks:
                s.close()
            self.procs.stop(mux)
            self.procs.stop(target)
        headers = ["clients", "connected", "accepted (mux fds)", "served (echo)"]
        headers += ["RSS idle MB", "RSS after 1 req each MB", "above baseline MB", "goal", "met"]
        parts.append(md_table(headers, body))
        parts += ["", *[f"- {n}" for n in notes]]
        return "\n".join(parts)

    def section_f(self) -> str:
        mode = self.args.soak_mode
        secs = self.plan.soak_seconds
        parts = [
            f"## f. Memory under load: {SOAK_CLIENTS} busy {mode} clients for {secs:g} s",
            "",
            "RSS sampled every 5 s; `first` is the sample after a 5 s warm-up. Goal: flat, "
            "that is last <= first x 1.1 + 2 MB.",
            "",
        ]
        out = self.out / "f-soak"
        target, mux, port = self.start_target_mux("f-soak", mode)
        samples: list[tuple[float, float]] = []
        result: Row = {}
        try:
            time.sleep(0.5)
            if self.go:
                argv = [str(self.loadgen), "-mode", mode, "-addr", f"{LOOPBACK}:{port}"]
                argv += ["-c", str(SOAK_CLIENTS), "-d", go_duration(secs), "-warmup", "0s"]
                argv += ["-timeout", REQUEST_TIMEOUT, "-label", "soak"]
            else:
                python = REPO / ".venv" / "bin" / "python"
                argv = [str(python if python.exists() else sys.executable), str(PYLOAD)]
                argv += ["--mode", mode, "--addr", f"{LOOPBACK}:{port}"]
                argv += ["-c", str(SOAK_CLIENTS), "-d", str(secs), "--warmup", "0"]
                argv += ["--values", "example", "--label", "soak"]
            log(f"--- f: {SOAK_CLIENTS} {mode} clients for {secs:g}s")
            load = self.procs.start(
                argv,
                stdout_path=out / "load.json",
                log_path=out / "load.err",
                cpu=LOAD_CPU,
            )
            t0 = time.monotonic()
            deadline = t0 + secs + 40
            # every 5 s, and once more just before the load generator's end
            n_ticks = int((secs - 0.01) // SOAK_SAMPLE_EVERY) + 1
            ticks = [i * SOAK_SAMPLE_EVERY for i in range(n_ticks)]
            ticks.append(max(secs - 0.5, ticks[-1] + 0.1))
            while load.poll() is None and time.monotonic() < deadline:
                now = time.monotonic() - t0
                if ticks and now >= ticks[0]:
                    ticks.pop(0)
                    value = rss_mb(mux.pid)
                    if value is not None:
                        samples.append((now, value))
                time.sleep(0.05)
            self.procs.stop(load)
            after = rss_mb(mux.pid)
            text = (out / "load.json").read_text().strip()
            if text:
                result = json.loads(text.splitlines()[-1])
                self.check_rows("f", [result | {"label": "soak"}])
            else:
                self.problems.append("f: the load generator printed no result")
            alive = mux.poll() is None
        finally:
            self.procs.stop(mux)
            self.procs.stop(target)
        with contextlib.suppress(OSError):
            seen = re.findall(r"requests=(\d+)", (out / "target.log").read_text())
            if seen and result:
                result["target_requests"] = int(seen[-1])
        warm = [v for t, v in samples if t >= SOAK_SAMPLE_EVERY - 0.5]
        first = warm[0] if warm else None
        last = warm[-1] if warm else None
        peak = max(warm) if warm else None
        flat = None if first is None or last is None else last <= first * 1.1 + 2.0
        self.raw["f"] = {"samples": samples, "result": result, "after_mb": after}
        parts.append(
            md_table(
                [
                    *("mode", "clients", "seconds", "rps", "err/mism", "target req/answer"),
                    *("RSS first MB", "last MB", "max MB", "after MB", "flat"),
                    "multiplexer alive",
                ],
                [
                    [
                        mode,
                        str(SOAK_CLIENTS),
                        f"{secs:g}",
                        frps(result.get("rps")),
                        f"{result.get('errors', '-')}/{result.get('mismatches', '-')}",
                        fnum(target_share(result)),
                        fnum(first, 1),
                        fnum(last, 1),
                        fnum(peak, 1),
                        fnum(after, 1),
                        met(flat),
                        "yes" if alive else "**no**",
                    ]
                ],
            )
        )
        parts += ["", "Samples (s: MB): " + ", ".join(f"{t:.0f}: {v:.1f}" for t, v in samples)]
        return "\n".join(parts)

    # ------------------------------------------------------------ modbus-proxy

    def section_g(self) -> str:
        parts = [
            "## g. Where the time goes: CPU time per answer on each core (echo)",
            "",
            f"CPU {LOAD_CPU} runs the Go load generator and target, CPU {PROXY_CPU} the "
            "project. Each core's busy share is read from /proc/stat over the middle of "
            "the run and divided by the answers in that time. Through the project, the "
            "target sees one request at a time, so each request wakes the target process "
            "and a load-generator thread from the other core, where direct runs hand over "
            "on one core or in batches. The project polls for 200 us after I/O, so its core "
            "shows busy even while it waits; the last row turns that polling off. The "
            "answers/s of these rows compare with each other, not with section a.",
            "",
        ]
        if not self.go:
            parts.append("Not measured: needs the Go load generator.")
            return "\n".join(parts)
        body = []
        for label, clients, through_project, flags in (
            ("direct, 1 client", 1, False, ()),
            ("direct, 16 clients", 16, False, ()),
            ("project, 1 client", 1, True, ()),
            ("project, 16 clients", 16, True, ()),
            ("project, 16 clients, `--busy-poll 0`", 16, True, ("--busy-poll", "0")),
        ):
            row = self.cpu_case(label, clients, through_project, flags)
            body.append(row)
        parts.append(
            md_table(
                [
                    *("run", "answers/s", f"CPU {LOAD_CPU} busy", f"CPU {LOAD_CPU} us/answer"),
                    *(f"CPU {PROXY_CPU} busy", f"CPU {PROXY_CPU} us/answer"),
                ],
                body,
            )
        )
        return "\n".join(parts)

    def cpu_case(
        self, label: str, clients: int, through_project: bool, flags: Sequence[str]
    ) -> list[str]:
        sub = "g-" + re.sub(r"[^a-z0-9]+", "-", label).strip("-")
        out = self.out / sub
        out.mkdir(parents=True, exist_ok=True)
        log(f"--- g: {label}")
        started: list[subprocess.Popen[bytes]] = []
        try:
            if through_project:
                target, mux, port = self.start_target_mux(sub, "echo", flags=flags)
                started += [target, mux]
            else:
                port = self.ports.take()
                argv = [str(self.loadgen), "serve", "-mode", "echo", "-addr"]
                target = self.procs.start(
                    [*argv, f"{LOOPBACK}:{port}"], log_path=out / "target.log", cpu=LOAD_CPU
                )
                started.append(target)
                if not wait_listen(port, 15, target):
                    raise RuntimeError(f"{sub}: target did not start")
            dur = max(self.plan.dur, 2.0)
            argv = [str(self.loadgen), "-mode", "echo", "-addr", f"{LOOPBACK}:{port}"]
            argv += ["-c", str(clients), "-d", go_duration(dur), "-warmup", "0s"]
            argv += ["-timeout", REQUEST_TIMEOUT, "-label", sub]
            load = self.procs.start(
                argv, stdout_path=out / "load.json", log_path=out / "load.err", cpu=LOAD_CPU
            )
            cpus = [LOAD_CPU, PROXY_CPU]
            time.sleep(0.5)
            first, t0 = cpu_jiffies(cpus), time.monotonic()
            time.sleep(dur - 1.0)
            last, t1 = cpu_jiffies(cpus), time.monotonic()
            load.wait(dur + 30)
            text = (out / "load.json").read_text().strip()
            result = json.loads(text.splitlines()[-1]) if text else {}
            self.check_rows("g", [result | {"label": label}] if result else [])
        finally:
            for proc in reversed(started):
                self.procs.stop(proc)
        rps = float(result.get("rps", 0.0)) or None
        answers = None if rps is None else rps * (t1 - t0)
        cells = [label, frps(rps)]
        for cpu in cpus:
            busy = (last[cpu][0] - first[cpu][0]) / max(1, last[cpu][1] - first[cpu][1])
            ticks_per_s = os.sysconf("SC_CLK_TCK")
            busy_s = (last[cpu][0] - first[cpu][0]) / ticks_per_s
            per_answer = None if not answers else busy_s / answers * 1e6
            cells += [f"{busy * 100:.0f} %", fnum(per_answer, 1)]
        self.raw[sub] = {"result": result, "cpu_first": first, "cpu_last": last}
        return cells

    def setup_modbus_proxy(self) -> None:
        if self.args.modbus_proxy:
            path = Path(self.args.modbus_proxy)
            if os.access(path, os.X_OK):
                self.modbus_proxy = path
            else:
                self.modbus_proxy_note = f"--modbus-proxy {path} is not executable"
            return
        exe = MODBUS_PROXY_VENV / "bin" / "modbus-proxy"
        if not os.access(exe, os.X_OK):
            log(f"--- installing modbus-proxy from PyPI into {MODBUS_PROXY_VENV}")
            logfile = self.out / "modbus-proxy-install.log"
            try:
                with logfile.open("wb") as f:
                    base = shutil.which("python3") or sys.executable
                    subprocess.run(
                        [base, "-m", "venv", str(MODBUS_PROXY_VENV)],
                        stdout=f,
                        stderr=subprocess.STDOUT,
                        check=True,
                        timeout=120,
                    )
                    subprocess.run(
                        [str(MODBUS_PROXY_VENV / "bin" / "pip"), "install", "modbus-proxy"],
                        stdout=f,
                        stderr=subprocess.STDOUT,
                        check=True,
                        timeout=300,
                    )
            except (OSError, subprocess.SubprocessError) as exc:
                self.modbus_proxy_note = (
                    f"installing modbus-proxy failed ({exc}); see {logfile}. "
                    "Sections a and d go on without it."
                )
                log(self.modbus_proxy_note)
                return
        if os.access(exe, os.X_OK):
            self.modbus_proxy = exe
            version = subprocess.run(
                [str(MODBUS_PROXY_VENV / "bin" / "python"), "-m", "pip", "show", "modbus-proxy"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            ).stdout
            m = re.search(r"^Version: (\S+)", version, re.M)
            self.modbus_proxy_note = f"modbus-proxy {m.group(1) if m else '?'} from {exe}"
        else:
            self.modbus_proxy_note = f"modbus-proxy missing after install: {exe}"


# ---------------------------------------------------------------- plain-socket clients


def connect_many(port: int, n: int, timeout: float) -> tuple[list[socket.socket], list[str]]:
    """Open n connections to 127.0.0.1:port, at most 512 handshakes at a time."""
    ok: list[socket.socket] = []
    errors: list[str] = []
    pending: set[socket.socket] = set()
    deadline = time.monotonic() + timeout
    started = 0
    with selectors.DefaultSelector() as sel:
        while (started < n or pending) and time.monotonic() < deadline:
            while started < n and len(pending) < 512:
                started += 1
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    rc = s.connect_ex((LOOPBACK, port))
                except OSError as exc:
                    errors.append(str(exc))
                    s.close()
                    if exc.errno in (errno.EMFILE, errno.ENFILE):
                        started = n
                    continue
                if rc == 0:
                    ok.append(s)
                elif rc == errno.EINPROGRESS:
                    sel.register(s, selectors.EVENT_WRITE, s)
                    pending.add(s)
                else:
                    errors.append(os.strerror(rc))
                    s.close()
            for key, _ in sel.select(0.2):
                s = key.data
                sel.unregister(s)
                pending.discard(s)
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    errors.append(os.strerror(err))
                    s.close()
                else:
                    ok.append(s)
        for s in pending:
            errors.append("connect timed out")
            s.close()
    return ok, errors


def echo_all(socks: Sequence[socket.socket], timeout: float, tag: str) -> tuple[int, str]:
    """Send one echo line on every socket and check each answer; (served, first failure)."""
    served = 0
    first_fail = ""
    bufs: dict[int, bytearray] = {}
    want: dict[int, bytes] = {}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for i, s in enumerate(socks):
            msg = f"{tag}-{i}-idle-client-check\n".encode()
            try:
                s.send(msg)
            except OSError as exc:
                first_fail = first_fail or f"send #{i}: {exc}"
                continue
            want[i], bufs[i] = msg, bytearray()
            sel.register(s, selectors.EVENT_READ, i)
        while want and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                i = key.data
                s = socks[i]
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    data = b""
                    first_fail = first_fail or f"recv #{i}: {exc}"
                buf = bufs[i]
                buf += data
                if not data or b"\n" in buf:
                    sel.unregister(s)
                    expected = want.pop(i)
                    if bytes(buf) == expected:
                        served += 1
                    elif not data:
                        first_fail = first_fail or f"#{i}: closed by the multiplexer"
                    else:
                        first_fail = first_fail or f"#{i}: sent {expected!r} got {bytes(buf)!r}"
        if want:
            first_fail = first_fail or f"{len(want)} answers missing after {timeout:g}s"
    return served, first_fail


def wait_fds(pid: int, target: int, timeout: float) -> int:
    """Wait until the process holds `target` fds (it has accepted the clients)."""
    deadline = time.monotonic() + timeout
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = fd_count(pid)
        if n >= target:
            return n
        if n != last:
            last, stable_since = n, time.monotonic()
        elif time.monotonic() - stable_since > 5:
            return n
        time.sleep(0.1)
    return fd_count(pid)


# ---------------------------------------------------------------- main


def machine_header(bench: Bench, argv: Sequence[str]) -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "src"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    ).stdout.strip()
    load1, load5, _ = os.getloadavg()
    gen = (
        f"Go loadgen {bench.loadgen} via {bench.compare}"
        if bench.go
        else "**Python fallback** (bench/pyload.py + example-server)"
    )
    return "\n".join(
        [
            "# tcp-multiplexer benchmark (issue 4)",
            "",
            f"- when: {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
            f"- machine: {platform.node() or '?'}, {os.cpu_count()} CPUs ({cpu}), "
            f"{platform.system()} {platform.release()}; load average {load1:.2f} / "
            f"{load5:.2f} at start",
            f"- project: {rev or '?'}" + (" + uncommitted changes in src/" if dirty else ""),
            f"- load generator: {gen}; multiplexer pinned to CPU {PROXY_CPU}, load generator "
            f"and target to CPU {LOAD_CPU}",
            f"- duration per case {bench.plan.dur:g}s after {bench.plan.warmup:g}s warm-up",
            f"- command: `{' '.join(shlex.quote(a) for a in argv)}`",
            "- only ratios from this one run count; absolute numbers move between runs.",
        ]
    )


FALLBACK_WARNING: Final = (
    "WARNING: the Python fallback load generator (bench/pyload.py, with `tcp-multiplexer "
    "example-server` as target) is used, because the Go one is not built or --python-load "
    "was given. A Python load generator "
    "saturates its core before the multiplexer does: these ratios understate the "
    "multiplexer and are not the figures of record. Build the Go one with "
    "../shared/bench/build-loadgen.sh. http and iso8583 are not covered by the fallback."
)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Run the issue-4 benchmark table and print the ratios.",
        epilog="Sections: a main table, b slow device, c pipelining, d modbus-proxy, "
        "e idle-client memory, f memory under load, g CPU time per answer on each core.",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 1s cases, fewer of them")
    ap.add_argument(
        "--only", default="a,b,c,d,e,f,g", help="sections to run, e.g. a,c (default all)"
    )
    ap.add_argument("--dur", type=parse_duration, help="measured time per case (default 3s)")
    ap.add_argument(
        "--repeat",
        type=int,
        help="runs of each mode in section a, reported as medians (default 3, 1 with --quick)",
    )
    ap.add_argument("--out", type=Path, help="output folder (default bench/results/<timestamp>)")
    ap.add_argument("--compare", type=Path, default=DEFAULT_COMPARE, help="compare.sh to use")
    ap.add_argument("--loadgen", type=Path, default=DEFAULT_LOADGEN, help="Go load generator")
    ap.add_argument(
        "--python-load", action="store_true", help="use the Python fallback even if built"
    )
    ap.add_argument(
        "--mux",
        type=Path,
        default=REPO / ".venv" / "bin" / "tcp-multiplexer",
        help="the tcp-multiplexer command (default: the project venv's)",
    )
    ap.add_argument("--modbus-proxy", help="modbus-proxy executable (default: install one)")
    ap.add_argument(
        "--soak-seconds",
        type=parse_duration,
        help="section f duration (default 60s, 15s with --quick)",
    )
    ap.add_argument("--soak-mode", choices=("echo", "modbus"), default="modbus")
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in sections if s not in "abcdefg" or len(s) != 1]
    if bad or not sections:
        ap.error(f"--only takes letters a-g separated by commas, not {args.only!r}")
    if args.repeat is not None and args.repeat < 1:
        ap.error("--repeat must be at least 1")
    args.sections = sections
    return args


def on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or REPO / "bench" / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(args.mux, os.X_OK):
        log(f"missing {args.mux}: create the project venv first (see README)")
        return 2
    go = not args.python_load and os.access(args.loadgen, os.X_OK)
    if go and not args.compare.is_file():
        log(f"missing {args.compare}; falling back to the Python load generator")
        go = False
    bench = Bench(
        args=args,
        out=out,
        procs=Processes(),
        plan=make_plan(args, go),
        go=go,
        loadgen=args.loadgen,
        compare=args.compare,
        mux=args.mux,
    )
    if not go:
        log(FALLBACK_WARNING)
    # Ctrl-C works even when started in the background (where SIGINT comes ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    sections: list[tuple[str, Callable[[], str]]] = [
        ("a", bench.section_a),
        ("b", bench.section_b),
        ("c", bench.section_c),
        ("d", bench.section_d),
        ("e", bench.section_e),
        ("f", bench.section_f),
        ("g", bench.section_g),
    ]
    summary = out / "summary.md"
    text: list[str] = [machine_header(bench, [sys.argv[0], *(argv or sys.argv[1:])])]
    if not go:
        text += ["", f"> {FALLBACK_WARNING}"]
    started = time.monotonic()
    status = 0
    try:
        if "a" in args.sections or "d" in args.sections:
            bench.setup_modbus_proxy()
            if bench.modbus_proxy is None:
                text += ["", f"> modbus-proxy not available: {bench.modbus_proxy_note}"]
        for letter, run in sections:
            if letter not in args.sections:
                continue
            try:
                part = run()
            except (OSError, RuntimeError, ValueError, KeyError) as exc:
                part = f"## section {letter}: failed\n\n{type(exc).__name__}: {exc}"
                bench.problems.append(f"section {letter} failed: {exc}")
                status = 1
            text += ["", part]
            summary.write_text("\n".join(text) + "\n")
    except (KeyboardInterrupt, Interrupted) as exc:
        log(f"interrupted ({type(exc).__name__} {exc}".rstrip() + "); stopping everything")
        text += ["", f"**Interrupted** ({type(exc).__name__}); results above are partial."]
        status = 130
    finally:
        bench.procs.stop_all()
    text += ["", "## Problems seen", ""]
    text += [f"- {p}" for p in bench.problems] or ["none: every answer checked and correct"]
    text += ["", f"Raw results: `{out}` (results.jsonl per case folder, logs beside them)."]
    text.append(f"Total time: {time.monotonic() - started:.0f} s.")
    (out / "raw.json").write_text(json.dumps(bench.raw, indent=1, default=str) + "\n")
    summary.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    log(f"summary: {summary}")
    return status


if __name__ == "__main__":
    sys.exit(main())
