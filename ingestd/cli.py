"""The `ingestd` command line: argument parsing only; the work is done by the modules it calls.

Exit codes: 0 success (a set accepted), 1 a set rejected, 2 usage or configuration
error, 3 a set held for an operator.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ingestd import __version__
from ingestd.config import Config, config_path, load_config
from ingestd.errors import IngestError, UsageError
from ingestd.logging import configure_logging
from ingestd.progress import Progress

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_HELD = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="ingestd",
        description="Receive school rosters (OneRoster 1.1) and turn them into change events.",
    )
    parser.add_argument("--version", action="version", version=f"ingestd {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $INGESTD_CONFIG or /etc/ingestd/ingestd.toml)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("validate", help="check a set (directory or zip) offline")
    p.add_argument("path", type=Path, help="a folder of OneRoster CSV files, or a zip")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--examples", type=int, default=5, metavar="N", help="examples shown per rule (text)"
    )

    p = sub.add_parser("sample", help="write a synthetic district (OneRoster 1.1 bulk set)")
    p.add_argument("out", type=Path, help="folder to write (or the zip file, with --zip)")
    p.add_argument("--students", type=int, default=1000, metavar="N")
    p.add_argument("--seed", type=int, default=1, metavar="S")
    p.add_argument("--zip", action="store_true", help="write one zip instead of a folder")

    sub.add_parser("check-config", help="validate the configuration and tenant files, then exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except IngestError as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ingestd: interrupted", file=sys.stderr)
        return 130


def _config(args: argparse.Namespace) -> Config:
    """The config: an explicit --config or $INGESTD_CONFIG must exist; the default may not."""
    explicit = bool(args.config or os.environ.get("INGESTD_CONFIG"))
    config = load_config(config_path(args.config), must_exist=explicit)
    configure_logging(config.daemon.log_format, config.daemon.log_level)
    return config


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "validate":
        return _validate(args)
    if args.command == "sample":
        return _sample(args)
    if args.command == "check-config":
        config = load_config(config_path(args.config))
        print(f"{config.path}: ok ({len(config.tenants)} tenants)")
        return EXIT_OK
    raise UsageError(f"unknown command {args.command!r}")


def _validate(args: argparse.Namespace) -> int:
    from ingestd.oneroster.validate import validate_set

    config = _config(args)
    path: Path = args.path
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if not (path.is_dir() or path.is_file()):
        raise UsageError(f"{path}: not a folder or a file")
    try:
        if path.is_dir():
            next(path.iterdir(), None)
        else:
            path.open("rb").close()
    except PermissionError:
        raise UsageError(f"{path}: permission denied") from None
    progress = Progress()
    result = validate_set(path, config.ingest.validation_policy(), progress)
    progress.done()
    if args.json:
        print(result.report.to_json())
    else:
        print(result.report.to_text(examples=args.examples))
    return EXIT_OK if result.accepted else EXIT_REJECTED


def _sample(args: argparse.Namespace) -> int:
    from ingestd.oneroster.sample import generate

    if args.students < 1:
        raise UsageError("--students must be at least 1")
    progress = Progress()
    summary = generate(
        args.out, students=args.students, seed=args.seed, as_zip=args.zip, progress=progress
    )
    progress.done()
    rows = ", ".join(f"{n} {entity}" for entity, n in summary.rows.items())
    print(f"wrote {summary.path} ({summary.bytes_written} bytes): {rows}")
    return EXIT_OK
