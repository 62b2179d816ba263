"""Command line: parse arguments into an AppConfig, set up logging, run, exit codes.

    tcp-multiplexer server -p PROTO -t HOST:PORT -l [HOST:]PORT [options]
    tcp-multiplexer list
    tcp-multiplexer version
    tcp-multiplexer example-server PROTO -l [HOST:]PORT [options]
    tcp-multiplexer demo [--duration SECONDS]

Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from tcp_multiplexer import __version__
from tcp_multiplexer.config.build import build_app
from tcp_multiplexer.config.file import ConfigFileError, load_config
from tcp_multiplexer.config.model import AppConfig
from tcp_multiplexer.config.render import render_config
from tcp_multiplexer.config.schema import BRIDGE_OPTIONS, GLOBAL_OPTIONS, protocol_options
from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.logs import setup_logging
from tcp_multiplexer.options import Option, Scope
from tcp_multiplexer.profiles import describe_profiles
from tcp_multiplexer.protocols.registry import protocol_names
from tcp_multiplexer.runner import run_async

logger = logging.getLogger("tcp_multiplexer")

EXIT_USAGE = 2
USAGE_HINT = """
Start with:
  tcp-multiplexer demo                    a simulated inverter and five clients, no hardware
  tcp-multiplexer server -p modbus -t 192.168.1.22:502 -l 127.0.0.1:5020 --timeout 5s -v
  tcp-multiplexer server --config site.toml
  tcp-multiplexer COMMAND --help          the options of one command"""


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _argument_type(option: Option) -> Callable[[str], Any]:
    """`option`'s parser as an argparse type (argparse reports ArgumentTypeError)."""
    parse = option.parse
    if parse is None:
        raise ValueError(f"{option.key} is a flag")

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    convert.__name__ = option.key
    return convert


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """One argument per option, in its help group. Nothing is set for an option not
    given (no argparse default): the config builder fills in the defaults, and can tell
    what was given."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in options:
        if not option.command_line_too:
            continue
        group = groups.get(option.group)
        if group is None:
            group = groups[option.group] = parser.add_argument_group(option.group or None)
        if option.parse is None:
            group.add_argument(
                *option.command_line,
                dest=option.field,
                action="store_true",
                default=argparse.SUPPRESS,
                help=option.help,
            )
        elif option.bare is not None:
            # A flag that may take a value: `--read-only` alone, or `--read-only=ignore`.
            group.add_argument(
                *option.command_line,
                dest=option.field,
                type=_checked(option),
                nargs="?",
                const=option.bare,
                default=argparse.SUPPRESS,
                metavar=option.metavar,
                help=option.help,
            )
        else:
            # Values stay strings here; the config builder reads them, after checking
            # them as argparse types so a bad one is reported with its flag.
            group.add_argument(
                *option.command_line,
                dest=option.field,
                type=_checked(option),
                action="append" if option.repeatable else "store",
                default=argparse.SUPPRESS,
                metavar=option.metavar,
                help=option.help,
            )


def _checked(option: Option) -> Callable[[str], str]:
    """An argparse type that checks `text` with `option`'s parser and keeps the text."""
    parse = _argument_type(option)

    def check(text: str) -> str:
        parse(text)
        return text

    check.__name__ = option.key
    return check


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="run the bridges of this TOML file (see packaging/example.toml); bridge "
        "options then belong in the file, global ones (-v, -d, --log-format, ...) may be "
        "given here too; SIGHUP rereads it",
    )
    options: list[Option] = [*BRIDGE_OPTIONS, *GLOBAL_OPTIONS]
    for extra in protocol_options().values():
        options.extend(extra)
    add_options(parser, options)


_NOT_OPTIONS = frozenset(("command", "handler", "config"))
_GLOBAL_FIELDS = frozenset(
    option.field for option in GLOBAL_OPTIONS if option.scope is Scope.GLOBAL
)
_FLAGS = {
    option.field: next(flag for flag in option.command_line if flag.startswith("--"))
    for options in (BRIDGE_OPTIONS, *protocol_options().values())
    for option in options
}


def config_from_args(args: argparse.Namespace) -> AppConfig:
    """The AppConfig for parsed `server` arguments (with --config: from the file).

    Raises:
        ConfigError: a value or a combination of values is invalid, or with --config a
            bridge option is given on the command line.
    """
    given = {key: value for key, value in vars(args).items() if key not in _NOT_OPTIONS}
    global_values = {key: value for key, value in given.items() if key in _GLOBAL_FIELDS}
    bridge_values = {key: value for key, value in given.items() if key not in _GLOBAL_FIELDS}
    path: str | None = getattr(args, "config", None)
    if path is None:
        return build_app(global_values, [bridge_values])
    if bridge_values:
        first = next(iter(bridge_values))
        raise ConfigError(
            f"{_FLAGS.get(first, first)} is a bridge option: with --config, set it in {path}"
        )
    return load_config(path, global_values)


def reload_source(args: argparse.Namespace) -> Callable[[], AppConfig] | None:
    """What SIGHUP rereads: the config file, with the command line's global options."""
    path: str | None = getattr(args, "config", None)
    if path is None:
        return None
    given = {key: value for key, value in vars(args).items() if key in _GLOBAL_FIELDS}
    return lambda: load_config(path, given)


def check_config(args: argparse.Namespace) -> int:
    """`check-config FILE`: validate it and print the effective settings; 0 or 2."""
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"tcp-multiplexer check-config: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"# {args.file}: valid, {len(config.bridges)} bridge(s), every setting shown")
    print(render_config(config), end="")
    return 0


def build_parser() -> OneLineErrorParser:
    """The whole command line."""
    import tcp_multiplexer.addon as addon
    import tcp_multiplexer.calibrate as calibrate
    import tcp_multiplexer.demo as demo
    import tcp_multiplexer.fetch as fetch
    import tcp_multiplexer.sunspec_cli as sunspec_cli
    import tcp_multiplexer.targets.cli as targets_cli

    parser = OneLineErrorParser(
        prog="tcp-multiplexer",
        description="Let many TCP clients share one (or a few) connections to a target that "
        "accepts only a few: Modbus/TCP, HTTP/1.1, ISO-8583, MPU and newline protocols.",
    )
    parser.add_argument("--version", action="version", version=f"tcp-multiplexer {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=OneLineErrorParser
    )
    server = commands.add_parser(
        "server",
        help="run the multiplexer",
        description="Accept clients, cut their streams into requests, send each over a shared "
        "target connection, and return every answer to the client that asked.",
    )
    _add_server_options(server)
    check = commands.add_parser(
        "check-config",
        help="validate a config file and print every bridge's effective settings",
        description="Validate a config file as the server would read it, and print it "
        "back with every setting, defaults filled in (the output is a valid config file "
        "itself). Exit status 0 if it is valid, 2 with one line on stderr if not.",
    )
    check.add_argument("file", metavar="FILE", help="the TOML config file")
    check.set_defaults(handler=check_config)
    addon.add_parser(commands)
    fetch.add_parsers(commands)
    commands.add_parser("list", help="list the supported protocols, one per line")
    commands.add_parser(
        "profiles",
        help="list the device profiles (--profile): what each sets and why",
    )
    commands.add_parser("version", help="print the version")
    sunspec_cli.add_parser(commands)
    calibrate.add_parser(commands)
    targets_cli.add_parser(commands)
    commands.choices["example-server"].set_defaults(handler=targets_cli.run)
    demo.add_parser(commands)
    return parser


async def serve(config: AppConfig, source: Callable[[], AppConfig] | None = None) -> int:
    """Run the multiplexer until a stop signal; 0 on a clean stop."""
    from tcp_multiplexer.app import App

    return await App(config, reload_source=source).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        print(USAGE_HINT)
        return EXIT_USAGE
    if args.command == "list":
        for name in protocol_names():
            print(name)
        return 0
    if args.command == "profiles":
        print(describe_profiles(), end="")
        return 0
    if args.command == "version":
        from tcp_multiplexer.version import version_text

        print(version_text())
        return 0
    if args.command == "server":
        try:
            config = config_from_args(args)
        except ConfigFileError as exc:
            parser.exit(EXIT_USAGE, f"tcp-multiplexer server: error: {exc}\n")
        except ConfigError as exc:
            parser.exit(EXIT_USAGE, f"tcp-multiplexer server: error: {exc.as_flag()}\n")
        setup_logging(config.log_level, config.log_format)
        return run_async(serve(config, reload_source(args)))
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
