"""The ``space-pipeline`` command line (placeholder until the stage lands)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one subcommand."""
    parser = argparse.ArgumentParser(prog="space-pipeline")
    parser.add_subparsers(dest="command", required=True).add_parser("run")
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
