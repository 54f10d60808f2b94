"""The ``space-pipeline`` command.

``run`` is the stage itself and ``config`` shows what it would run with; ``offsets`` shows and
moves the group's offsets (a replay); ``status``, ``skip``, ``pause`` and ``resume`` call a
running stage's admin API (``pipeline.admin_client``). ``demo``, ``stub-api``, ``broker``,
``schema-registry`` and ``produce`` are tools for trying it (``pipeline.dev``), imported only when
asked for, so ``run`` starts without them.

Exit codes: 0 after a graceful stop, 1 on a fatal error (one log line says which), 2 on bad
configuration (one line per problem, each naming the setting), 128 + signal number when a second
signal forces exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from pipeline import __version__
from pipeline.config import Settings, as_text, describe, env_name, load_settings, redactor
from pipeline.errors import ConfigError, PipelineError
from pipeline.logging import configure_logging

EXIT_FATAL = 1
EXIT_CONFIG = 2
FORCE_HINT = "send SIGTERM or SIGINT again to exit at once"

log = structlog.get_logger("pipeline.cli")


def _settings_or_exit() -> Settings | int:
    try:
        return load_settings()
    except ConfigError as error:
        for problem in error.problems:
            print(f"space-pipeline: {problem}", file=sys.stderr)
        return EXIT_CONFIG


def _run(_: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    if isinstance(settings, int):
        return settings
    configure_logging(settings.log_level, settings.log_format, redact=redactor(settings))
    try:
        asyncio.run(_serve(settings))
    except Exception as error:
        cause = _root_cause(error)
        if isinstance(cause, ConfigError):  # found only once the broker answered
            for problem in cause.problems:
                print(f"space-pipeline: {problem}", file=sys.stderr)
            return EXIT_CONFIG
        log.error("stage.failed", error=repr(cause))  # noqa: TRY400 - one line
        return EXIT_FATAL
    return 0


def _config(_: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    if isinstance(settings, int):
        return settings
    print("\n".join(describe(settings)))
    return 0


def _root_cause(error: BaseException) -> BaseException:
    """The first real error inside the task groups' ``ExceptionGroup`` wrapping."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


async def _serve(settings: Settings) -> None:
    from pipeline.stage import Stage  # noqa: PLC0415 - keep `--help` and config errors fast

    stage = Stage(settings)
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stage.stopping:
            log.error("stage.forced_exit", signal=signal.Signals(signum).name)
            sys.stdout.flush()
            os._exit(128 + signum)
        log.info("stage.signal", signal=signal.Signals(signum).name)
        stage.stop(force_hint=FORCE_HINT)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stage.run()


def _admin(args: argparse.Namespace) -> int:
    from pipeline import admin_client  # noqa: PLC0415

    return admin_client.main(args)


def _demo(args: argparse.Namespace) -> int:
    from pipeline.dev.demo import DemoOptions, run_demo  # noqa: PLC0415

    configure_logging("WARNING", "console")
    from pipeline.dev.stub_api import FaultWindow  # noqa: PLC0415

    try:
        fault = None if args.fault == "none" else FaultWindow.parse(args.fault)
    except ValueError as error:
        print(f"space-pipeline demo: --fault: {error}", file=sys.stderr)
        return EXIT_CONFIG
    options = DemoOptions(
        partitions=args.partitions,
        records=args.records,
        latency_ms=args.latency_ms,
        fault=fault,
    )
    return asyncio.run(run_demo(options))


def _stub_api(args: argparse.Namespace) -> int:
    from pipeline.dev import stub_api  # noqa: PLC0415

    try:
        config = stub_api.config_from_args(args)
    except ValueError as error:
        print(f"space-pipeline stub-api: {error}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging("INFO")
    return _until_interrupted(args, lambda: stub_api.serve(config, args.host, args.port))


def _broker(args: argparse.Namespace) -> int:
    from pipeline.dev import broker  # noqa: PLC0415

    configure_logging("WARNING")
    return _until_interrupted(
        args, lambda: broker.serve(args.host, args.port, durable=args.durable)
    )


def _schema_registry(args: argparse.Namespace) -> int:
    from pipeline.dev import schema_registry  # noqa: PLC0415

    configure_logging("WARNING")
    return _until_interrupted(
        args, lambda: schema_registry.serve(args.host, args.port, args.username, args.password)
    )


def _produce(args: argparse.Namespace) -> int:
    from pipeline.dev import produce  # noqa: PLC0415

    return produce.main(args)


def _offsets(args: argparse.Namespace) -> int:
    from pipeline import group_offsets  # noqa: PLC0415

    return group_offsets.main(args)


def _until_interrupted(
    args: argparse.Namespace, serve: Callable[[], Coroutine[Any, Any, None]]
) -> int:
    """Run a foreground tool until Ctrl-C or SIGTERM; both are a normal way to stop it.

    A port someone else holds, or a tool that ends on its own, is one line saying what to do,
    not a traceback.
    """
    name = f"space-pipeline {args.command}"

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - inside asyncio.run
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            _check_bindable(args.host, args.port)
            await serve()

    try:
        asyncio.run(main())
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        print(
            f"{name}: cannot listen on {args.host}:{args.port} ({reason.lower()}):"
            " choose another --port (0 for any free one) or --host",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    except PipelineError as error:
        print(f"{name}: {error}", file=sys.stderr)
        return EXIT_FATAL
    return 0


def _check_bindable(host: str, port: int) -> None:
    """Raise ``OSError`` now if ``host:port`` cannot be listened on.

    The embedded broker is a child process that would only panic about it; the stub API would
    raise the same error later, from deeper down.
    """
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        probe.bind((host, port))


def _settings_help() -> str:
    required = [env_name(n) for n, f in Settings.model_fields.items() if f.is_required()]
    lines = [
        "Settings are PIPELINE_* environment variables (a .env file in the working directory"
        " is read too).",
        "Required: " + ", ".join(required) + ", and PIPELINE_SPACE_API_URL (or"
        " PIPELINE_SINK_FUNCTION, to deliver through your own function).",
        "`space-pipeline config` prints every setting with its effective value; the README's"
        ' "Settings" table explains each. All of them, with their defaults:',
        "",
    ]
    for name, field in Settings.model_fields.items():
        default = (
            "(required)"
            if field.is_required()
            else as_text(field.get_default(call_default_factory=True)) or "(unset)"
        )
        lines.append(f"  {env_name(name):<44} {default}")
    return "\n".join(lines)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; a dev tool's options are declared only when it is the command."""
    parser = argparse.ArgumentParser(
        prog="space-pipeline",
        description="Kafka partitions to the Space API, in order, without blocking.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the stage (configured by PIPELINE_* environment variables)",
        epilog=_settings_help() if command == "run" else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.set_defaults(handler=_run)
    config = commands.add_parser(
        "config", help="print the effective settings (secrets masked); exit 2 if any is wrong"
    )
    config.set_defaults(handler=_config)
    offsets = commands.add_parser(
        "offsets", help="show the group's offsets and lag, or reset them to replay (dry run first)"
    )
    offsets.set_defaults(handler=_offsets)
    if command == "offsets":
        from pipeline.group_offsets import add_arguments  # noqa: PLC0415

        add_arguments(offsets)

    admin = {
        "status": "show a running stage's partitions, API gate and group (its admin API)",
        "skip": "let the record a partition is halted at go past (dead-lettered if configured)",
        "pause": "stop sending and fetching for one partition, or all",
        "resume": "undo pause for one partition, or all",
    }
    for name, text in admin.items():
        tool = commands.add_parser(name, help=text)
        tool.set_defaults(handler=_admin)
        if name == command:
            from pipeline import admin_client  # noqa: PLC0415

            admin_client.add_arguments(tool, name)

    demo = commands.add_parser(
        "demo", help="embedded broker + stub Space API + the stage, with live progress"
    )
    demo.add_argument("--partitions", type=at_least(1), default=8, help="partitions (default 8)")
    demo.add_argument(
        "--records", type=at_least(1), default=4000, help="records to send (default 4000)"
    )
    demo.add_argument(
        "--latency-ms", type=at_least(0, float), default=20.0, help="stub API latency (default 20)"
    )
    demo.add_argument(
        "--fault",
        default="outage@3+3",
        help="a fault the stub API injects, KIND@START+SECONDS with KIND outage, throttle,"
        " auth or redirect; 'none' for none (default: %(default)s, 503s for 3 s from 3 s in)",
    )
    demo.set_defaults(handler=_demo)

    tools: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
        "stub-api": ("a reference Space API receiver that checks order", _stub_api),
        "broker": ("an embedded Kafka-protocol broker (tansu) in the foreground", _broker),
        "produce": ("write sample records, or stdin lines, to a topic", _produce),
        "schema-registry": ("a local schema registry in memory, for Avro topics", _schema_registry),
    }
    for name, (text, handler) in tools.items():
        tool = commands.add_parser(name, help=text)
        tool.set_defaults(handler=handler)
        if name == command:
            _tool_arguments(name, tool)
    return parser


def at_least(minimum: float, kind: Callable[[str], float] = int) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` not below ``minimum``, else a usage error (2)."""

    def number(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        return value

    return number


def _tool_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "stub-api":
        from pipeline.dev import stub_api as module  # noqa: PLC0415
    elif name == "broker":
        from pipeline.dev import broker as module  # type: ignore[no-redef]  # noqa: PLC0415
    elif name == "schema-registry":
        from pipeline.dev import schema_registry as module  # type: ignore[no-redef]  # noqa: PLC0415
    else:
        from pipeline.dev import produce as module  # type: ignore[no-redef]  # noqa: PLC0415
    module.add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one subcommand; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
