"""The ``space-pipeline`` command: ``run``, ``demo`` and ``stub-api``.

Exit codes: 0 after a graceful stop, 1 on a fatal error (one log line says which), 2 on bad
configuration (one line names the setting), 128 + signal number when a second signal forces exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import structlog
from pydantic import ValidationError
from pydantic_settings import SettingsError

from pipeline import __version__
from pipeline.config import Settings, describe_error
from pipeline.logging import configure_logging

EXIT_FATAL = 1
EXIT_CONFIG = 2

log = structlog.get_logger("pipeline.cli")


def _run(_: argparse.Namespace) -> int:
    try:
        settings = Settings()  # type: ignore[call-arg]  # read from the environment
    except ValidationError as error:
        print(f"space-pipeline: {describe_error(error)}", file=sys.stderr)
        return EXIT_CONFIG
    except SettingsError as error:  # an environment value pydantic-settings could not decode
        print(f"space-pipeline: {error}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    try:
        asyncio.run(_serve(settings))
    except Exception as error:
        log.error("stage.failed", error=repr(_root_cause(error)))  # noqa: TRY400 - one line
        return EXIT_FATAL
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
        stage.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stage.run()


def _demo(args: argparse.Namespace) -> int:
    from pipeline.dev.demo import DemoOptions, run_demo  # noqa: PLC0415

    configure_logging("WARNING")
    options = DemoOptions(
        partitions=args.partitions, records=args.records, latency_ms=args.latency_ms
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
    try:
        asyncio.run(stub_api.serve(config, args.host, args.port))
    except KeyboardInterrupt:
        return 0
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one subcommand per job."""
    parser = argparse.ArgumentParser(
        prog="space-pipeline",
        description="Kafka partitions to the Space API, in order, without blocking.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run the stage (configured by PIPELINE_* environment variables)"
    )
    run.set_defaults(handler=_run)

    demo = commands.add_parser(
        "demo", help="embedded broker + stub Space API + the stage, with live progress"
    )
    demo.add_argument("--partitions", type=int, default=8, help="partitions (default 8)")
    demo.add_argument("--records", type=int, default=4000, help="records to send (default 4000)")
    demo.add_argument(
        "--latency-ms", type=float, default=20.0, help="stub API latency (default 20)"
    )
    demo.set_defaults(handler=_demo)

    from pipeline.dev import stub_api  # noqa: PLC0415

    stub = commands.add_parser(
        "stub-api", help="a reference Space API receiver for trying the stage"
    )
    stub_api.add_arguments(stub)
    stub.set_defaults(handler=_stub_api)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one subcommand; returns the exit code."""
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
