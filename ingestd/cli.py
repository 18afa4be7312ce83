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
from ingestd.events.store import SET_STATUSES, EventStore
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

    p = sub.add_parser("ingest", help="take one set through the whole pipeline")
    p.add_argument("tenant", help="tenant id (school or district)")
    p.add_argument("path", type=Path, help="a folder of OneRoster CSV files, or a zip")
    p.add_argument("--json", action="store_true", help="print the set's summary as JSON")

    p = sub.add_parser("events", help="print change events as JSON lines")
    p.add_argument("--tenant", metavar="T")
    p.add_argument("--after", type=int, default=0, metavar="ID", help="events after this id")
    p.add_argument("--type", dest="type_glob", metavar="GLOB", help="e.g. 'users.*'")
    p.add_argument("--limit", type=int, metavar="N")
    p.add_argument("--follow", action="store_true", help="keep printing new events")

    p = sub.add_parser("sets", help="list sets; approve or reject a held set")
    p.add_argument("--tenant", metavar="T")
    p.add_argument("--status", choices=SET_STATUSES)
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--json", action="store_true")
    sets_sub = p.add_subparsers(dest="action", metavar="ACTION")
    for action, text in (("approve", "commit a held set"), ("reject", "drop a held set")):
        q = sets_sub.add_parser(action, help=text)
        q.add_argument("set_id")

    p = sub.add_parser("diff", help="what would change if NEW followed OLD (no state)")
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--json", action="store_true", help="print the events it would emit")
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
    if args.command == "ingest":
        return _ingest(args)
    if args.command == "events":
        return _events(args)
    if args.command == "sets":
        return _sets(args)
    if args.command == "diff":
        return _diff(args)
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


def _pipeline(config: Config):
    from ingestd.pipeline.ingest import Pipeline, tenant_policy

    state_dir = config.daemon.state_dir
    store = EventStore.open(state_dir)
    return Pipeline(state_dir, store, lambda tenant: tenant_policy(config, tenant))


def _ingest(args: argparse.Namespace) -> int:
    import json

    from ingestd.config import validate_tenant_id
    from ingestd.pipeline.ingest import summary_text

    config = _config(args)
    try:
        validate_tenant_id(args.tenant)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not args.path.exists():
        raise UsageError(f"{args.path}: no such file or directory")
    pipeline = _pipeline(config)
    with pipeline.store:
        for outcome in pipeline.recover():  # sets a crash left half-done come first
            print(summary_text(outcome), file=sys.stderr)
        outcome = pipeline.ingest_path(args.tenant, args.path)
    print(json.dumps(outcome.summary, indent=2) if args.json else summary_text(outcome))
    return outcome.exit_code


def _events(args: argparse.Namespace) -> int:
    from ingestd.events.feed import events

    config = _config(args)
    with EventStore.open(config.daemon.state_dir) as store:
        try:
            for line in events(
                store,
                after=args.after,
                tenant=args.tenant,
                type_glob=args.type_glob,
                limit=args.limit,
                follow=args.follow,
            ):
                sys.stdout.write(line + "\n")
                if args.follow:
                    sys.stdout.flush()
        except BrokenPipeError:  # `ingestd events | head`
            sys.stderr.close()
    return EXIT_OK


def _sets(args: argparse.Namespace) -> int:
    import json

    from ingestd.pipeline.ingest import summary_text

    config = _config(args)
    if args.action in ("approve", "reject"):
        pipeline = _pipeline(config)
        with pipeline.store:
            if args.action == "approve":
                outcome = pipeline.approve(args.set_id)
            else:
                outcome = pipeline.reject(args.set_id)
        print(summary_text(outcome))
        # Rejecting is the operator's decision carried out: success. Approving reports
        # the outcome of the commit (a set can still fail, e.g. on a bug: exit 1).
        return EXIT_OK if args.action == "reject" else outcome.exit_code
    with EventStore.open(config.daemon.state_dir) as store:
        rows = store.list_sets(args.tenant, args.status, args.limit)
    if args.json:
        for row in rows:
            print(json.dumps({k: getattr(row, k) for k in row.__slots__}))
        return EXIT_OK
    print(f"{'SET':<26}  {'TENANT':<20} {'STATUS':<10} {'RECEIVED':<24} CHANGES")
    for row in rows:
        counts = (row.summary or {}).get("counts") or {}
        changes = sum(c["created"] + c["updated"] + c["deleted"] for c in counts.values())
        print(f"{row.id:<26}  {row.tenant:<20} {row.status:<10} {row.received:<24} {changes}")
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    from ingestd.pipeline.compare import compare_sets
    from ingestd.pipeline.ingest import tenant_policy

    config = _config(args)
    for path in (args.old, args.new):
        if not path.exists():
            raise UsageError(f"{path}: no such file or directory")
    comparison = compare_sets(args.old, args.new, tenant_policy(config, ""))
    if not comparison.ok:
        for name, result in (("OLD", comparison.old), ("NEW", comparison.new)):
            if not result.accepted:
                print(f"{name} is not a valid set:\n{result.report.to_text()}", file=sys.stderr)
        return EXIT_REJECTED
    if args.json:
        for batch in comparison.events():
            for data in batch.frame().select(batch.expression()).to_series():
                sys.stdout.write(f'{{"type":"{batch.type}","data":{data}}}\n')
        return EXIT_OK
    print(f"{'ENTITY':<17} {'OLD':>9} {'NEW':>9} {'CREATED':>8} {'UPDATED':>8} {'DELETED':>8}")
    for entity, d in comparison.diffs.items():
        c = d.counts
        print(
            f"{entity:<17} {c['prior_rows']:>9} {c['rows']:>9} {c['created']:>8} "
            f"{c['updated']:>8} {c['deleted']:>8}"
        )
    return EXIT_OK
