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
from ingestd.config import Config, TenantConfig, config_path, load_config
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

    sub.add_parser("run", help="run the daemon (foreground; systemd Type=notify)")
    p = sub.add_parser("demo", help="the whole loop on this machine, in a folder of its own")
    p.add_argument("--dir", type=Path, metavar="DIR", help="where (default: a new temp folder)")
    p.add_argument("--students", type=int, default=200, metavar="N")
    sub.add_parser("hostkeys", help="print the SFTP host keys' SHA256 fingerprints")

    p = sub.add_parser("tenant", help="add, list, remove schools; set their SFTP password")
    tenant_sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = tenant_sub.add_parser("add", help="add a school and print its connection details")
    q.add_argument("tenant_id")
    q.add_argument("--name", default="")
    secret = q.add_mutually_exclusive_group()
    secret.add_argument("--generate-password", action="store_true")
    secret.add_argument("--password-stdin", action="store_true")
    q.add_argument("--public-key", type=Path, action="append", default=[], metavar="FILE")
    q.add_argument("--allow-ip", action="append", default=[], metavar="CIDR")
    rest = q.add_argument_group("REST sources (pulled instead of pushed over SFTP)")
    rest.add_argument("--source", choices=("sftp", "oneroster", "powerschool", "clever"))
    rest.add_argument("--base-url", metavar="URL")
    rest.add_argument("--auth", choices=("oauth2", "oauth1", "bearer"), help="OneRoster REST")
    rest.add_argument("--token-url", metavar="URL", help="OAuth 2.0 token endpoint")
    rest.add_argument("--client-id", metavar="ID", help="OAuth client id / consumer key")
    rest.add_argument("--client-secret-file", metavar="FILE", help="file holding the secret")
    rest.add_argument("--token-file", metavar="FILE", help="file holding a bearer token")
    rest.add_argument("--scope", action="append", default=[], metavar="SCOPE")
    rest.add_argument("--every", metavar="DURATION", help='pull this often, e.g. "6h"')
    rest.add_argument("--at", metavar="HH:MM", help="pull daily at this local time")
    q = tenant_sub.add_parser("passwd", help="set a new SFTP password")
    q.add_argument("tenant_id")
    secret = q.add_mutually_exclusive_group()
    secret.add_argument("--generate-password", action="store_true")
    secret.add_argument("--password-stdin", action="store_true")
    tenant_sub.add_parser("list", help="the schools and their last accepted set")
    q = tenant_sub.add_parser("remove", help="remove a school (its data is kept)")
    q.add_argument("tenant_id")

    p = sub.add_parser("sync", help="pull a REST tenant now, through the whole pipeline")
    p.add_argument("tenant")
    p.add_argument("--json", action="store_true", help="print the set's summary as JSON")
    p = sub.add_parser("check", help="test a REST tenant's credentials and what it shares")
    p.add_argument("tenant")

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
    except BrokenPipeError:  # `ingestd events | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit-time flush is quiet too
        return EXIT_OK


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
    if args.command == "run":
        import asyncio

        from ingestd.daemon import run_daemon

        return asyncio.run(run_daemon(_config(args)))
    if args.command == "sync":
        return _sync(args)
    if args.command == "check":
        return _check(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "hostkeys":
        return _hostkeys(args)
    if args.command == "tenant":
        return _tenant(args)
    raise UsageError(f"unknown command {args.command!r}")


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    from ingestd.demo import run_demo

    folder = args.dir or Path(tempfile.mkdtemp(prefix="ingestd-demo-"))
    return run_demo(folder.resolve(), students=args.students)


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


def _rest_tenant(config: Config, tenant_id: str) -> TenantConfig:
    tenant = config.tenants.get(tenant_id)
    if tenant is None:
        raise UsageError(f"no tenant {tenant_id!r} in {config.tenants_dir}")
    if tenant.source == "sftp":
        raise UsageError(f"{tenant_id} pushes over SFTP; only REST tenants are pulled")
    return tenant


def _sync(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from ingestd.pipeline.ingest import SetOutcome, summary_text
    from ingestd.sources.pollers.runner import pull_set

    config = _config(args)
    tenant = _rest_tenant(config, args.tenant)
    progress = Progress()
    progress(f"pulling {tenant.id} ({tenant.source})")
    try:
        pulled = asyncio.run(pull_set(config, tenant, progress=progress))
    finally:
        progress.done()
    pipeline = _pipeline(config)
    with pipeline.store:
        if pulled.error is None:
            outcome = pipeline.process(pulled.set_id)
        else:
            row = pipeline.store.get_set(pulled.set_id)
            summary = (row.summary if row else None) or {}
            outcome = SetOutcome(pulled.set_id, tenant.id, "rejected", summary)
    print(
        f"pulled {sum(pulled.rows.values())} records in {pulled.requests} requests, "
        f"{pulled.seconds:.1f} s",
        file=sys.stderr,
    )
    for warning in pulled.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps(outcome.summary, indent=2) if args.json else summary_text(outcome))
    return outcome.exit_code


def _check(args: argparse.Namespace) -> int:
    import asyncio

    from ingestd.sources.pollers.base import PullError
    from ingestd.sources.pollers.runner import check_tenant

    config = _config(args)
    tenant = _rest_tenant(config, args.tenant)
    try:
        lines = asyncio.run(check_tenant(config, tenant))
    except PullError as exc:
        print(f"{tenant.id}: FAILED: {exc.message}")
        return EXIT_REJECTED
    for line in lines:
        print(f"{'ok  ' if line.ok else 'FAIL'}  {line.collection:<20} {line.detail}")
    return EXIT_OK if all(line.ok for line in lines) else EXIT_REJECTED


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


def _hostkeys(args: argparse.Namespace) -> int:
    from ingestd.sources.sftp.hostkeys import fingerprints, load_host_keys

    config = _config(args)
    for alg, fp in fingerprints(load_host_keys(config.daemon.state_dir)):
        print(f"{alg:<12} {fp}")
    return EXIT_OK


def _tenant(args: argparse.Namespace) -> int:
    from ingestd import tenants

    config = _config(args)
    if config.tenants_dir is None:
        raise UsageError("tenants live in tenants.d/ beside the config file: pass --config")
    folder = config.tenants_dir
    if args.action == "list":
        return _tenant_list(config)
    if args.action == "remove":
        path = tenants.remove_tenant(folder, args.tenant_id)
        print(f"removed {path}; the school's inbox, sets and events are kept")
        print("reload the daemon (systemctl reload ingestd, or SIGHUP) to refuse its logins")
        return EXIT_OK
    password = _new_password(args)
    from ingestd.sources.sftp.auth import hash_password

    if args.action == "passwd":
        if password is None:
            raise UsageError("give --generate-password or --password-stdin")
        data = tenants.read_tenant(folder, args.tenant_id)
        data["password_hash"] = hash_password(password)
        tenants.write_tenant(folder, args.tenant_id, data, new=False)
        if args.generate_password:
            print(f"password: {password}")
        print("reload the daemon (systemctl reload ingestd, or SIGHUP) to use it")
        return EXIT_OK
    data: dict = {"name": args.name}
    if args.source and args.source != "sftp":
        return _tenant_add_rest(config, args, data)
    if password is not None:
        data["password_hash"] = hash_password(password)
    keys = []
    for key_file in args.public_key:
        try:
            keys += [line.strip() for line in key_file.read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise UsageError(f"{key_file}: {exc.strerror}") from None
    if keys:
        data["authorized_keys"] = keys
    if args.allow_ip:
        data["allow_ips"] = args.allow_ip
    if password is None and not keys:
        raise UsageError("a school needs a password or a public key to log in")
    try:
        path = tenants.write_tenant(folder, args.tenant_id, data, new=True)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _connection_details(config, args.tenant_id, password if args.generate_password else None)
    print(f"(written to {path}; reload the daemon to let the school in)")
    return EXIT_OK


def _tenant_add_rest(config: Config, args: argparse.Namespace, data: dict) -> int:
    """A REST tenant: its source settings (secrets stay in their files), checked by the
    same model the daemon loads, then written."""
    from pydantic import ValidationError

    from ingestd import tenants

    if args.generate_password or args.password_stdin or args.public_key:
        raise UsageError("a REST tenant is pulled: it has no SFTP password or key")
    data["source"] = args.source
    for key in ("base_url", "auth", "token_url", "client_id", "client_secret_file",
                "token_file", "every", "at"):  # fmt: skip
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.scope:
        data["scopes"] = args.scope
    try:
        tenant = TenantConfig.model_validate({"id": args.tenant_id, **data})
    except ValidationError as exc:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise UsageError(f"{args.tenant_id}: {problems}") from None
    config_dir = config.path.parent if config.path else None
    for key in ("client_secret_file", "token_file"):
        if getattr(tenant, key) is not None and not tenant.secret_path(key, config_dir).exists():
            print(f"note: {key} {tenant.secret_path(key, config_dir)} does not exist yet")
    try:
        path = tenants.write_tenant(config.tenants_dir, args.tenant_id, data, new=True)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"written to {path}")
    print(f"test it:  ingestd check {args.tenant_id}")
    print(f"pull now: ingestd sync {args.tenant_id}  (the daemon pulls on schedule once reloaded)")
    return EXIT_OK


def _new_password(args: argparse.Namespace) -> str | None:
    from ingestd.sources.sftp.auth import generate_password

    if getattr(args, "generate_password", False):
        return generate_password()
    if getattr(args, "password_stdin", False):
        password = sys.stdin.readline().rstrip("\n")
        if len(password) < 12:
            raise UsageError("the password must have at least 12 characters")
        return password
    return None


def _connection_details(config: Config, tenant_id: str, password: str | None) -> None:
    import socket

    from ingestd.sources.sftp.hostkeys import fingerprints, load_host_keys

    host = config.sftp.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    print("SFTP connection for the school's SIS (Skyward: Export > SFTP settings):")
    print(f"  host:     {host}")
    print(f"  port:     {config.sftp.port}")
    print(f"  username: {tenant_id}")
    if password:
        print(f"  password: {password}   (shown once; only a hash is stored)")
    print("  folder:   /  (upload the OneRoster files, or one zip, here)")
    print("  host key fingerprints (check them on first connection):")
    for alg, fp in fingerprints(load_host_keys(config.daemon.state_dir)):
        print(f"    {alg:<12} {fp}")


def _tenant_list(config: Config) -> int:
    from datetime import UTC, datetime

    last: dict[str, tuple[str | None, str | None]] = {}
    db = config.daemon.state_dir / "ingestd.db"
    if db.exists():
        with EventStore(db) as store:
            last = {t: (snapshot, when) for t, snapshot, when in store.tenants()}
    print(f"{'TENANT':<24} {'AUTH':<12} {'LAST ACCEPTED SET':<26}  {'ACCEPTED AT':<24}  AGE")
    for tenant_id, tenant in sorted(config.tenants.items()):
        auth = "+".join(
            m
            for m, on in (("password", tenant.password_hash), ("key", tenant.authorized_keys))
            if on
        )
        if tenant.source != "sftp":
            auth = f"{tenant.source}"
        set_id, when = last.get(tenant_id, (None, None))
        age = ""
        if when:
            seconds = (datetime.now(UTC) - datetime.fromisoformat(when)).total_seconds()
            age = f"{seconds / 3600:.1f} h"
            if seconds > config.ingest.stale_after:
                age += "  STALE (no accepted set within [ingest] stale_after)"
        disabled = "" if tenant.enabled else "  (disabled)"
        print(
            f"{tenant_id:<24} {auth or '-':<12} {set_id or 'never':<26}  {when or '':<24}  "
            f"{age}{disabled}"
        )
    return EXIT_OK
