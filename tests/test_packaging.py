"""Packaging: the Dockerfile (+ .dockerignore, the image's config) and the systemd unit
(+ sysusers, tmpfiles). Static checks of what the files say, then the parts that can run
here for real: the HEALTHCHECK command against TCP servers, the daemon under the image's
config and under the unit's notify/watchdog/reload/stop contract, systemd's own tools."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
UNIT = ROOT / "systemd" / "ingestd.service"
SYSUSERS = ROOT / "systemd" / "ingestd.sysusers.conf"
TMPFILES = ROOT / "systemd" / "ingestd.tmpfiles.conf"
ENV = {k: v for k, v in os.environ.items() if k not in ("INGESTD_CONFIG", "STATE_DIRECTORY")}


# --- a small Dockerfile parser ------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    cmd: str  # upper case: FROM, RUN, COPY...
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined (as Docker does: the backslash and the
    newline go, comment and empty lines inside a continuation are dropped)."""
    out: list[Instruction] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not buf:
            start = number
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1]
            continue
        buf += raw
        cmd, _, args = buf.strip().partition(" ")
        out.append(Instruction(cmd.upper(), args.strip(), start))
        buf = ""
    assert not buf, "the Dockerfile ends inside a continuation line"
    return out


def exec_form(args: str) -> list[str] | None:
    """The JSON-array (exec) form's arguments, or None for the shell form."""
    if not args.startswith("["):
        return None
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def as_argv(args: str) -> list[str]:
    """What Docker runs for ENTRYPOINT/CMD/HEALTHCHECK CMD arguments."""
    argv = exec_form(args)
    return argv if argv is not None else ["/bin/sh", "-c", args]


def split_options(args: str) -> tuple[dict[str, str], str]:
    """`--name=value` options in front of an instruction's arguments, and the rest."""
    options: dict[str, str] = {}
    rest = args
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        name, _, value = option[2:].partition("=")
        options[name] = value
        rest = rest.lstrip()
    return options, rest


def copy_sources(ins: Instruction) -> tuple[list[str], str]:
    """A COPY's sources and destination (shell or JSON form)."""
    _, rest = split_options(ins.args)
    parts = exec_form(rest) or rest.split()
    return parts[:-1], parts[-1]


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.cmd == "FROM"]
    assert starts, "no FROM"
    return instructions[starts[-1] :]


def env_vars(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage:
        if ins.cmd != "ENV":
            continue
        words = shlex.split(ins.args)
        if "=" not in words[0]:  # legacy `ENV KEY value`
            env[words[0]] = ins.args.partition(" ")[2].strip()
            continue
        for word in words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


@pytest.fixture(scope="module")
def stage() -> list[Instruction]:
    return final_stage(parse_dockerfile(DOCKERFILE.read_text()))


def only(stage: list[Instruction], cmd: str) -> Instruction:
    found = [ins for ins in stage if ins.cmd == cmd]
    assert found, f"no {cmd} in the final stage"
    return found[-1]  # the last one is the one in effect


def test_parser_joins_continuations_and_reads_json_forms() -> None:
    text = 'FROM a\n# c\nRUN x \\\n  # inner comment\n    && y\nCMD ["run", "--x"]\nCMD run\n'
    parsed = parse_dockerfile(text)
    assert [(i.cmd, i.line) for i in parsed] == [("FROM", 1), ("RUN", 3), ("CMD", 6), ("CMD", 7)]
    assert parsed[1].args == "x     && y"
    assert as_argv(parsed[2].args) == ["run", "--x"]
    assert as_argv(parsed[3].args) == ["/bin/sh", "-c", "run"]


# --- the Dockerfile -------------------------------------------------------------------------


def test_base_image_is_python_slim(stage: list[Instruction]) -> None:
    image = stage[0].args.split()[0]
    assert re.fullmatch(r"python:3\.1[1-9](\.\d+)?-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", image)


def test_runs_as_a_created_non_root_user(stage: list[Instruction]) -> None:
    users = [i for i, ins in enumerate(stage) if ins.cmd == "USER"]
    assert users, "no USER: the daemon would run as root"
    last_user = users[-1]
    for cmd in ("ENTRYPOINT", "CMD"):
        position = max(i for i, ins in enumerate(stage) if ins.cmd == cmd)
        assert last_user < position, f"USER comes after {cmd}"
    name = stage[last_user].args.split(":")[0]
    assert name not in ("root", "0", "")
    runs = " ".join(ins.args for ins in stage[:last_user] if ins.cmd == "RUN")
    created = re.search(rf"useradd\b[^&;|]*--uid\s+(\d+)[^&;|]*\s{re.escape(name)}\b", runs)
    assert created, f"user {name!r} is not created with a fixed --uid before USER"
    assert int(created.group(1)) != 0


def test_state_volume_port_and_config(stage: list[Instruction]) -> None:
    volume = only(stage, "VOLUME").args
    assert "/var/lib/ingestd" in (exec_form(volume) or volume.split())
    ports = [p.split("/")[0] for ins in stage if ins.cmd == "EXPOSE" for p in ins.args.split()]
    assert "2222" in ports
    env = env_vars(stage)
    assert env.get("STATE_DIRECTORY") == "/var/lib/ingestd"  # what config.py reads
    assert env.get("INGESTD_CONFIG") == "/etc/ingestd/ingestd.toml"
    destinations = [copy_sources(ins)[1] for ins in stage if ins.cmd == "COPY"]
    assert env["INGESTD_CONFIG"] in destinations, "nothing is copied to $INGESTD_CONFIG"


def test_entrypoint_and_cmd_run_the_daemon(stage: list[Instruction]) -> None:
    entrypoint = as_argv(only(stage, "ENTRYPOINT").args)
    cmd = as_argv(only(stage, "CMD").args)
    assert exec_form(only(stage, "ENTRYPOINT").args), "a shell-form ENTRYPOINT ignores CMD"
    assert entrypoint + cmd == ["ingestd", "run"]


def image_config(stage: list[Instruction]) -> Path:
    """The repository file the image installs as its config."""
    for ins in stage:
        if ins.cmd == "COPY":
            sources, destination = copy_sources(ins)
            if destination == "/etc/ingestd/ingestd.toml":
                assert len(sources) == 1
                return ROOT / sources[0]
    raise AssertionError("no COPY to /etc/ingestd/ingestd.toml")


def test_image_config_loads_and_listens_on_the_exposed_port(stage: list[Instruction]) -> None:
    config = image_config(stage)
    run = subprocess.run(
        [sys.executable, "-m", "ingestd", "--config", str(config), "check-config"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    data = tomllib.loads(config.read_text())
    assert data["sftp"]["listen"] == "0.0.0.0:2222"  # reachable through -p 2222:2222
    assert "state_dir" not in data.get("daemon", {}), "state_dir must stay the volume"
    # The HEALTHCHECK connects from loopback without logging in: never ban it.
    assert "127.0.0.1/32" in data["sftp"]["defender"]["safe_ips"]


# --- build context: COPY sources and .dockerignore -----------------------------------------


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """moby/patternmatcher: `**` any number of path segments, `*` and `?` within one."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(f"^{out}$")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
        rules.append((negated, _dockerignore_regex(pattern)))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves `path` out of the context: the last rule matching the path or
    one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for negated, regex in rules:
        if any(regex.match(c) for c in candidates):
            verdict = not negated
    return verdict


@pytest.fixture(scope="module")
def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    return dockerignore_rules(DOCKERIGNORE.read_text())


def test_dockerignore_keeps_the_venv_git_and_tests_out(ignore_rules) -> None:
    kept_out = [
        ".venv/bin/python",
        ".git/config",
        "tests/test_cli.py",
        "bench/ingest.py",
        "ingestd/__pycache__/cli.cpython-311.pyc",
        "config/ingestd.example.toml",
    ]
    for path in kept_out:
        assert excluded(path, ignore_rules), f"{path} would be sent to the build"


def test_every_copy_source_exists_and_reaches_the_build(stage: list[Instruction], ignore_rules):
    copies = [
        ins for ins in stage if ins.cmd == "COPY" and "from" not in split_options(ins.args)[0]
    ]
    assert copies
    for ins in copies:
        for source in copy_sources(ins)[0]:
            path = ROOT / source
            assert path.exists(), f"COPY {source} (line {ins.line}): no such file"
            assert not excluded(source.rstrip("/"), ignore_rules), f"{source} is .dockerignored"
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                if "__pycache__" not in relative:
                    assert not excluded(relative, ignore_rules), f"{relative} is .dockerignored"


def test_the_build_gets_what_pyproject_needs(stage: list[Instruction]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {s.rstrip("/") for ins in stage if ins.cmd == "COPY" for s in copy_sources(ins)[0]}
    assert {"pyproject.toml", project["project"]["readme"]} <= copied
    for package in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert package.rstrip("*") in copied, f"package {package} is not copied"
    license_files = project["project"].get("license-files", [])
    assert all(f in copied for f in license_files)
    run = " ".join(ins.args for ins in stage if ins.cmd == "RUN")
    assert re.search(r"pip install --no-cache-dir /src\b", run)


# --- the HEALTHCHECK, run for real -----------------------------------------------------------


def healthcheck(stage: list[Instruction]) -> tuple[dict[str, str], list[str]]:
    options, rest = split_options(only(stage, "HEALTHCHECK").args)
    keyword, _, command = rest.partition(" ")
    assert keyword.upper() == "CMD", rest
    return options, as_argv(command.strip())


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    assert match, value
    return float(match.group(1)) * units[match.group(2)]


def run_healthcheck(stage: list[Instruction], port: int) -> subprocess.CompletedProcess[str]:
    options, argv = healthcheck(stage)
    assert argv[0] == "python", "the check must need nothing but the image's python"
    assert sum(a.count("2222") for a in argv) == 1, "the check must name port 2222 once"
    argv = [sys.executable] + [a.replace("2222", str(port)) for a in argv[1:]]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds(options["timeout"]), check=False
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def tcp_server(greeting: bytes | None) -> Iterator[int]:
    """A real TCP server on 127.0.0.1 that sends `greeting` to each client (None: nothing)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    done = threading.Event()
    clients: list[socket.socket] = []

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            clients.append(conn)
            if greeting is not None:
                conn.sendall(greeting)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        listener.close()
        for conn in clients:
            conn.close()


def test_healthcheck_options_are_sensible(stage: list[Instruction]) -> None:
    options, argv = healthcheck(stage)
    assert 5 <= seconds(options["interval"]) <= 300
    assert seconds(options["start-period"]) >= 10
    assert 1 <= int(options.get("retries", "3")) <= 10
    inner = re.search(r"timeout=(\d+)", " ".join(argv))
    assert inner and int(inner.group(1)) < seconds(options["timeout"]), (
        "the socket timeout must end the check before Docker kills it"
    )


def test_healthcheck_passes_on_an_ssh_banner(stage: list[Instruction]) -> None:
    with tcp_server(b"SSH-2.0-test\r\n") as port:
        run = run_healthcheck(stage, port)
    assert run.returncode == 0, run.stderr


def test_healthcheck_fails_on_a_closed_port_another_banner_or_silence(stage) -> None:
    assert run_healthcheck(stage, free_port()).returncode != 0
    with tcp_server(b"HTTP/1.1 400 Bad Request\r\n\r\n") as port:
        assert run_healthcheck(stage, port).returncode != 0
    with tcp_server(None) as port:  # accepts, says nothing: the socket timeout ends it
        assert run_healthcheck(stage, port).returncode != 0


# --- the daemon as packaged ------------------------------------------------------------------


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    notify: socket.socket
    messages: list[tuple[float, str]] = field(default_factory=list)

    def pump(self, until: float) -> None:
        """Collect sd_notify messages until time.monotonic() reaches `until`."""
        while time.monotonic() < until and self.proc.poll() is None:
            try:
                data = self.notify.recv(4096).decode()
            except TimeoutError:
                continue
            now = time.monotonic()
            self.messages += [(now, line) for line in data.splitlines()]

    def drain(self) -> None:
        """Collect what the daemon sent before it exited."""
        with contextlib.suppress(TimeoutError):
            while True:
                data = self.notify.recv(4096).decode()
                self.messages += [(time.monotonic(), line) for line in data.splitlines()]

    def wait_for(self, line: str, seconds: float) -> float:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for at, seen in self.messages:
                if seen == line:
                    return at
            if self.proc.poll() is not None:
                break
            self.pump(min(deadline, time.monotonic() + 0.2))
        raise AssertionError(f"no {line} from the daemon; log:\n{self.log.read_text()[-3000:]}")


@contextlib.contextmanager
def daemon(config_text: str, workdir: Path, watchdog_usec: int | None = None) -> Iterator[Daemon]:
    """`ingestd run` with this config, a notify socket as systemd's, stopped at the end."""
    port = free_port()
    config = workdir / "ingestd.toml"
    config.write_text(config_text.replace("0.0.0.0:2222", f"127.0.0.1:{port}"))
    sockdir = Path(tempfile.mkdtemp(prefix="ingestd-notify-"))  # AF_UNIX paths are short
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sockdir / "notify"))
    notify.settimeout(0.1)
    env = dict(
        ENV,
        INGESTD_CONFIG=str(config),
        STATE_DIRECTORY=str(workdir / "state"),
        NOTIFY_SOCKET=str(sockdir / "notify"),
    )
    env.pop("WATCHDOG_PID", None)
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    log = workdir / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingestd", "run"], env=env, stdout=out, stderr=out
        )
    handle = Daemon(proc, port, log, notify)
    try:
        handle.wait_for("READY=1", 60)
        yield handle
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        notify.close()
        shutil.rmtree(sockdir, ignore_errors=True)


def test_healthcheck_stays_healthy_against_the_daemon_with_the_image_config(
    stage: list[Instruction], tmp_path: Path
) -> None:
    """Each check leaves without logging in; the defender must not ban it after 5."""
    text = image_config(stage).read_text()
    assert '"0.0.0.0:2222"' in text
    with daemon(text, tmp_path) as d:
        for attempt in range(8):
            run = run_healthcheck(stage, d.port)
            assert run.returncode == 0, f"check {attempt + 1} failed: {d.log.read_text()[-2000:]}"
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(60) == 0
    assert "sftp.ban" not in d.log.read_text()


# --- the systemd unit ---------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (keys such as SystemCallFilter= repeat;
    an empty value resets a list setting)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def effective(values: list[str]) -> list[str]:
    """A list setting's words after the last empty (resetting) assignment."""
    last_reset = max((i for i, v in enumerate(values) if v == ""), default=-1)
    return [w for v in values[last_reset + 1 :] for w in v.split()]


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    assert key in service, f"{key}= is not set"
    return service[key][-1]


def test_unit_parser_keeps_repeated_keys_and_resets() -> None:
    unit = parse_unit("[Service]\n# c\nA=x \\\n  y\nF=@a\nF=~@b @c\nC=\n")
    assert unit["Service"] == {"A": ["x  y"], "F": ["@a", "~@b @c"], "C": [""]}
    assert effective(["a", "", "b c"]) == ["b", "c"]


def test_unit_runs_the_daemon_as_a_notify_service(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    exec_start = one(service, "ExecStart").split()
    assert exec_start[0].startswith("/") and exec_start[0].endswith("/ingestd")
    assert exec_start[-1] == "run"
    assert one(service, "ExecReload").split()[-2:] == ["-HUP", "$MAINPID"]
    assert one(service, "Restart") == "on-failure"
    assert seconds(one(service, "WatchdogSec") + "s") > 0


def test_unit_user_state_and_config(service: dict[str, list[str]]) -> None:
    assert one(service, "User") not in ("root", "0", "")
    assert one(service, "StateDirectory") == "ingestd"
    assert one(service, "ConfigurationDirectory") == "ingestd"
    assert "INGESTD_CONFIG=/etc/ingestd/ingestd.toml" in effective(service["Environment"])


def test_unit_hardening(service: dict[str, list[str]]) -> None:
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "ProtectSystem") == "strict"
    assert effective(service["CapabilityBoundingSet"]) == []
    assert "AmbientCapabilities" not in service
    families = effective(service["RestrictAddressFamilies"])
    assert "AF_UNIX" in families, "sd_notify needs AF_UNIX"
    assert {"AF_INET", "AF_INET6"} <= set(families)
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    if service.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        assert "POLARS_SKIP_CPU_CHECK=1" in effective(service["Environment"])


def test_sysusers_creates_the_units_user(service: dict[str, list[str]]) -> None:
    entries = [
        shlex.split(line)
        for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    users = [e for e in entries if e[0] == "u"]
    assert len(users) == 1
    _, name, _, gecos, home = users[0]
    assert name == one(service, "User") == one(service, "Group")
    assert gecos == "ingestd roster ingestion"
    assert home == f"/var/lib/{one(service, 'StateDirectory')}"


def test_stop_timeout_exceeds_the_daemons_stop_grace(service: dict[str, list[str]]) -> None:
    from ingestd.config import DaemonConfig

    assert seconds(one(service, "TimeoutStopSec") + "s") > DaemonConfig().stop_grace


def test_daemon_keeps_the_units_notify_watchdog_reload_and_stop_contract(
    service: dict[str, list[str]], tmp_path: Path
) -> None:
    """READY=1; WATCHDOG=1 more often than the watchdog timeout (scaled down to 2 s, as
    systemd passes WATCHDOG_USEC); SIGHUP (ExecReload) reloads; SIGTERM stops in time."""
    config = '[sftp]\nlisten = "0.0.0.0:2222"\n'
    with daemon(config, tmp_path, watchdog_usec=2_000_000) as d:
        d.pump(time.monotonic() + 3.5)
        pings = [at for at, line in d.messages if line == "WATCHDOG=1"]
        assert len(pings) >= 2, "the daemon does not feed systemd's watchdog"
        assert max(b - a for a, b in itertools.pairwise(pings)) < 2.0
        d.proc.send_signal(signal.SIGHUP)
        d.pump(time.monotonic() + 1.0)
        assert d.proc.poll() is None, "SIGHUP (ExecReload) killed the daemon"
        assert "daemon.reloaded" in d.log.read_text()
        d.proc.send_signal(signal.SIGTERM)
        stop_timeout = seconds(one(service, "TimeoutStopSec") + "s")
        assert d.proc.wait(stop_timeout) == 0
        d.drain()
        assert any(line == "STOPPING=1" for _, line in d.messages)


def test_memory_deny_write_execute_choice_still_holds(service: dict[str, list[str]]) -> None:
    """The unit leaves MemoryDenyWriteExecute off because `import polars` maps code
    writable then executable; with it on, the unit's Environment must make polars import.
    Checked with the kernel's own W^X switch (prctl PR_SET_MDWE, Linux 6.3+)."""
    on = service.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes"
    code = (
        "import ctypes, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.prctl(65, 1, 0, 0, 0) != 0: sys.exit(77)  # PR_SET_MDWE, REFUSE_EXEC_GAIN\n"
        "import polars\n"
    )
    env = dict(ENV)
    env.pop("POLARS_SKIP_CPU_CHECK", None)
    if on:
        env.update(v.split("=", 1) for v in effective(service.get("Environment", [])))
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    if run.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    if on:
        assert run.returncode == 0, f"polars does not import under W^X:\n{run.stderr}"
    else:
        assert run.returncode != 0, (
            "polars imports under W^X now: MemoryDenyWriteExecute=yes can be turned on"
        )


# --- systemd's own tools, when this machine has them ---------------------------------------


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed here")
    return path


def test_systemd_analyze_verify(service: dict[str, list[str]], tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    executable = one(service, "ExecStart").split()[0]
    run = subprocess.run(
        [analyze, "verify", str(UNIT)], capture_output=True, text=True, timeout=60, check=False
    )
    problems = [
        line
        for line in (run.stdout + run.stderr).splitlines()
        if line.strip() and f"Command {executable} is not executable" not in line
    ]
    assert not problems, "\n".join(problems)
    if not os.access(executable, os.X_OK):
        # The same unit with an ExecStart that exists must verify cleanly.
        installed = Path(sys.executable).parent / "ingestd"
        if not installed.exists():
            pytest.skip(f"{executable} is not installed, and no ingestd beside python")
        copy = tmp_path / "ingestd.service"
        copy.write_text(UNIT.read_text().replace(executable, str(installed)))
        run = subprocess.run(
            [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
        )
    assert run.returncode == 0 and not (run.stdout + run.stderr).strip(), run.stderr


def test_sysusers_and_tmpfiles_make_a_tenants_dir_the_daemon_can_read(tmp_path: Path) -> None:
    """In a scratch root: the user and group, then /etc/ingestd/tenants.d root:ingestd 2750."""
    sysusers, tmpfiles = need("systemd-sysusers"), need("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles must run as root to set the owner")
    (tmp_path / "etc/sysusers.d").mkdir(parents=True)
    (tmp_path / "etc/tmpfiles.d").mkdir()
    shutil.copy(SYSUSERS, tmp_path / "etc/sysusers.d/ingestd.conf")
    shutil.copy(TMPFILES, tmp_path / "etc/tmpfiles.d/ingestd.conf")
    for argv in ([sysusers, f"--root={tmp_path}"], [tmpfiles, f"--root={tmp_path}", "--create"]):
        run = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stderr
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    group = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc/group").read_text().splitlines()
    }
    assert passwd["ingestd"][5] == "/var/lib/ingestd"
    assert int(passwd["ingestd"][2]) != 0
    tenants = (tmp_path / "etc/ingestd/tenants.d").stat()
    assert stat.S_IMODE(tenants.st_mode) == 0o2750
    assert (tenants.st_uid, tenants.st_gid) == (0, int(group["ingestd"][2]))


def test_tenant_files_written_by_root_get_the_daemons_group(tmp_path: Path) -> None:
    """What the tmpfiles entry relies on: `ingestd tenant add` (run as root) in a
    set-group-ID tenants.d leaves a 0640 file of that group, which the daemon can read."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give tenants.d another group")
    gid = 54321  # stands for the ingestd group
    tenants = tmp_path / "tenants.d"
    tenants.mkdir()
    os.chown(tenants, 0, gid)
    tenants.chmod(0o2750)
    config = tmp_path / "ingestd.toml"
    config.write_text("")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ingestd",
            "--config",
            str(config),
            "tenant",
            "add",
            "school-a",
            "--password-stdin",
        ],
        input="a long enough password\n",
        capture_output=True,
        text=True,
        env=dict(ENV, STATE_DIRECTORY=str(tmp_path / "state")),
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    written = (tenants / "school-a.toml").stat()
    assert written.st_gid == gid
    assert stat.S_IMODE(written.st_mode) == 0o640
