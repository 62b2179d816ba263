"""Coverage-guided fuzzing of the framers, codecs and the Modbus gateway policy (atheris).

    python bench/fuzz.py seed                      # write the seed inputs into the corpus
    python bench/fuzz.py run --seconds 600         # every target, two at a time
    python bench/fuzz.py run modbus-gateway echo --seconds 60 --parallel 1

Each target (tests/fuzz/targets.py) runs for the given time in a process of its own,
from a working copy of its saved corpus (tests/fuzz/corpus/NAME); afterwards, the
inputs that reached new code are merged back into the saved corpus, which the test
suite replays (tests/fuzz/test_replay.py). A crash leaves its input in
bench/fuzz-crashes/ (reproduce: `python bench/fuzz.py replay FILE --target NAME`) and
the run reports it. Needs `pip install atheris`; not run in CI.

The summary gives, per target, the executions, the coverage libFuzzer counted (edges
of the instrumented Python code) and the features, the corpus size, and the crashes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
CORPUS: Final = ROOT / "tests" / "fuzz" / "corpus"
CRASHES: Final = ROOT / "bench" / "fuzz-crashes"
MAX_LEN: Final = 2048
"""Longest input libFuzzer makes: several messages of every protocol."""


def _import_path() -> None:
    for folder in (ROOT, ROOT / "src"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


@dataclass
class Outcome:
    target: str
    executions: int
    coverage: int
    features: int
    corpus: int
    crashes: list[Path]
    seconds: float


def _stat(pattern: str, text: str) -> int:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else 0


def fuzz_one(target: str, seconds: int, python: str) -> Outcome:
    """Run one target for `seconds` in a child process, merge its finds, report."""
    saved = CORPUS / target
    saved.mkdir(parents=True, exist_ok=True)
    CRASHES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as folder:
        work = Path(folder) / "corpus"
        shutil.copytree(saved, work)
        # libFuzzer's merge runs its own command line again: give it one that works.
        wrapper = Path(folder) / "fuzz-target"
        wrapper.write_text(
            f'#!/bin/sh\nexec "{python}" "{__file__}" child --self "$0" {target} -- "$@"\n'
        )
        wrapper.chmod(0o755)
        argv = [
            str(wrapper),
            str(work),
            f"-max_total_time={seconds}",
            f"-max_len={MAX_LEN}",
            "-print_final_stats=1",
            f"-artifact_prefix={CRASHES}/{target}-",
            "-timeout=10",
            "-rss_limit_mb=1024",
        ]
        run = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 300)
        log = run.stdout + run.stderr
        (Path(folder) / "log").write_text(log)
        merge = subprocess.run(
            [str(wrapper), "-merge=1", str(saved), str(work)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if merge.returncode != 0:
            print(f"{target}: merging the corpus failed:\n{merge.stderr[-2000:]}", file=sys.stderr)
    crashes = sorted(CRASHES.glob(f"{target}-*"))
    return Outcome(
        target,
        _stat(r"stat::number_of_executed_units:\s+(\d+)", log),
        _stat(r"\bcov: (\d+)", log),
        _stat(r"\bft: (\d+)", log),
        len(list(saved.iterdir())),
        crashes,
        seconds,
    )


def child(target: str, command: str, libfuzzer_args: Sequence[str]) -> None:
    """Inside the fuzzing process: instrument the package, run libFuzzer on `target`
    (`command` runs this again, for libFuzzer's merge)."""
    import atheris  # only here: the rest runs without it

    _import_path()
    with atheris.instrument_imports(include=["tcp_multiplexer", "tests.fuzz"]):
        from tests.fuzz.targets import TARGETS

    check = TARGETS[target]
    atheris.Setup([command, *libfuzzer_args], check)
    atheris.Fuzz()


def seed() -> None:
    _import_path()
    from tests.fuzz.seeds import SEEDS

    for target, inputs in SEEDS.items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for index, data in enumerate(inputs):
            (folder / f"seed-{index:02d}").write_bytes(data)
        print(f"{target}: {len(inputs)} seeds in {folder.relative_to(ROOT)}")


def replay(path: Path, target: str) -> None:
    """Run one input through its target, uninstrumented: the traceback of a crash."""
    _import_path()
    from tests.fuzz.targets import TARGETS

    TARGETS[target](path.read_bytes())
    print(f"{path}: no failure")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="fuzz targets for a while, then report")
    run.add_argument("targets", nargs="*", help="default: every target")
    run.add_argument("--seconds", type=int, default=600, help="per target (default 600)")
    run.add_argument("--parallel", type=int, default=2, help="targets at once (default 2)")
    commands.add_parser("seed", help="write the seed inputs into tests/fuzz/corpus")
    commands.add_parser("list", help="list the targets")
    again = commands.add_parser("replay", help="run one input through a target")
    again.add_argument("file", type=Path)
    again.add_argument("--target", required=True)
    inner = commands.add_parser("child", help=argparse.SUPPRESS)
    inner.add_argument("target")
    inner.add_argument("--self", dest="self_command", default=sys.argv[0])
    inner.add_argument("libfuzzer", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "child":
        # Before anything imports the package: atheris instruments it as it loads.
        child(args.target, args.self_command, [arg for arg in args.libfuzzer if arg != "--"])
        return 0

    _import_path()
    from tests.fuzz.targets import TARGETS

    if args.command == "seed":
        seed()
        return 0
    if args.command == "list":
        print("\n".join(TARGETS))
        return 0
    if args.command == "replay":
        replay(args.file, args.target)
        return 0
    targets = args.targets or list(TARGETS)
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target {unknown[0]!r} (bench/fuzz.py list)")
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        outcomes = list(
            pool.map(lambda name: fuzz_one(name, args.seconds, sys.executable), targets)
        )
    print(
        f"{'target':<16} {'seconds':>7} {'executions':>12} {'cov':>6} {'ft':>6} "
        f"{'corpus':>6}  crashes"
    )
    for outcome in outcomes:
        crashes = ", ".join(path.name for path in outcome.crashes) or "none"
        print(
            f"{outcome.target:<16} {outcome.seconds:>7} {outcome.executions:>12,} "
            f"{outcome.coverage:>6} {outcome.features:>6} {outcome.corpus:>6}  {crashes}"
        )
    return 1 if any(outcome.crashes for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
