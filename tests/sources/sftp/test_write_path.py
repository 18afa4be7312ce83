"""The upload write path: buffers queued for a thread, packets fed to asyncssh one by one.

A request only copies its bytes into the upload's buffer; full buffers are written
(pwrite, sha256) by a thread while the next ones fill. These tests slow down or break
that thread (`uploads._write`) to check what must hold whatever the disk does: at most
`_QUEUED_WRITES + 1` buffers per upload, a failed background write fails the upload
(nothing published, no temp file), a session cut while a write runs leaves no temp
file and no open descriptor, fstat sees every byte received, out-of-order writes are
hashed correctly. And `_feed_packet_by_packet` leaves asyncssh at most one block of
unparsed input after each slice, for every cipher and MAC mode.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import time
from typing import Any

import asyncssh
import pytest

from ingestd.sources.sftp import uploads
from tests.sources.sftp.harness import (
    TEMP_PREFIX,
    ServerThread,
    asyncssh_connect,
    wait_for,
)

MIB = 1 << 20
CHUNK = 255 << 10  # what OpenSSH's sftp writes per request


def payload(size: int) -> bytes:
    return os.urandom(size)


async def upload(port: int, name: str, data: bytes, chunk: int = CHUNK, **options: Any) -> None:
    """Write `data` to `name` in order, `chunk` bytes a request, up to 16 requests in flight."""
    async with (
        asyncssh_connect(port, **options) as conn,
        conn.start_sftp_client() as sftp,
        sftp.open(name, "wb") as f,
    ):
        await asyncio.gather(*(f.write(data[i : i + chunk], i) for i in range(0, len(data), chunk)))


def slow_writes(monkeypatch: pytest.MonkeyPatch, seconds: float) -> list[int | OSError]:
    """Every disk write of an upload sleeps `seconds` first; returns the offsets written
    (or the error a write met: a descriptor closed under it would be EBADF)."""
    real = uploads._write
    offsets: list[int | OSError] = []

    def slow(upload: Any, offset: int, data: Any) -> None:
        time.sleep(seconds)
        try:
            real(upload, offset, data)
        except OSError as exc:
            offsets.append(exc)
            raise
        offsets.append(offset)

    monkeypatch.setattr(uploads, "_write", slow)
    return offsets


def open_temp_descriptors() -> list[str]:
    """This process's open descriptors on upload temp files (the server runs in it)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if TEMP_PREFIX in target:
            found.append(target)
    return found


def test_a_slow_disk_holds_at_most_the_queued_buffers(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_writes(monkeypatch, 0.05)
    data = payload(12 * uploads._FLUSH_BYTES + 12345)
    most = 0

    def buffers() -> int:
        open_uploads = [u for j in server.svc._jails for u in j._uploads]
        return max((u.disk.buffers for u in open_uploads), default=0)

    async def watched() -> None:
        nonlocal most
        task = asyncio.create_task(upload(server.port, "/big.bin", data))
        while not task.done():
            most = max(most, server.call(buffers))
            await asyncio.sleep(0.01)
        await task

    asyncio.run(watched())
    assert 2 <= most <= uploads._QUEUED_WRITES + 1
    assert (server.inbox() / "big.bin").read_bytes() == data
    [done] = server.uploads
    assert done.sha256 == hashlib.sha256(data).hexdigest()
    assert done.size == len(data)


def test_a_failed_background_write_fails_the_upload(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = uploads._write

    def failing(upload: Any, offset: int, data: Any) -> None:
        if offset >= uploads._FLUSH_BYTES:
            raise OSError(errno.EIO, "Input/output error")
        real(upload, offset, data)

    monkeypatch.setattr(uploads, "_write", failing)
    data = payload(6 * uploads._FLUSH_BYTES)
    with pytest.raises(asyncssh.SFTPFailure, match="could not save the file"):
        asyncio.run(upload(server.port, "/big.bin", data))
    assert wait_for(lambda: server.temp_files() == [])
    assert list(server.inbox().iterdir()) == []
    assert server.uploads == []
    assert open_temp_descriptors() == []


def test_a_session_cut_during_a_disk_write_leaves_nothing(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    offsets = slow_writes(monkeypatch, 0.5)

    async def session() -> None:
        conn = await asyncssh_connect(server.port)
        try:
            sftp = await conn.start_sftp_client()
            f = await sftp.open("/cut.bin", "wb")
            await f.write(payload(uploads._FLUSH_BYTES + 1000))  # one buffer goes to the disk
            assert len(server.temp_files()) == 1
        finally:
            conn.abort()  # while that write sleeps
        await conn.wait_closed()

    asyncio.run(session())
    assert wait_for(lambda: offsets == [0], timeout=5)  # the running write finished fine...
    assert wait_for(lambda: server.temp_files() == [])  # ...then the temp file went
    assert wait_for(lambda: open_temp_descriptors() == [])
    assert list(server.inbox().iterdir()) == []
    assert server.uploads == []


def test_fstat_sees_every_byte_received(server: ServerThread) -> None:
    data = payload(uploads._FLUSH_BYTES + 3 * CHUNK)  # one full buffer and a partial one

    async def session() -> int:
        async with (
            asyncssh_connect(server.port) as conn,
            conn.start_sftp_client() as sftp,
            sftp.open("/s.bin", "wb") as f,
        ):
            for i in range(0, len(data), CHUNK):
                await f.write(data[i : i + CHUNK], i)
            return (await f.stat()).size

    assert asyncio.run(session()) == len(data)
    assert (server.inbox() / "s.bin").read_bytes() == data


def test_out_of_order_writes_are_hashed_from_the_file(server: ServerThread) -> None:
    chunk = uploads._FLUSH_BYTES // 2 + 777
    data = payload(7 * chunk + 5)
    pieces = [(i, data[i : i + chunk]) for i in range(0, len(data), chunk)]

    async def session() -> None:
        async with (
            asyncssh_connect(server.port) as conn,
            conn.start_sftp_client() as sftp,
            sftp.open("/o.bin", "wb") as f,
        ):
            for offset, piece in reversed(pieces):
                await f.write(piece, offset)

    asyncio.run(session())
    assert (server.inbox() / "o.bin").read_bytes() == data
    [done] = server.uploads
    assert done.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "algs",
    [
        {"encryption_algs": ["aes128-gcm@openssh.com"]},
        {"encryption_algs": ["chacha20-poly1305@openssh.com"]},  # encrypted length
        {"encryption_algs": ["aes256-ctr"], "mac_algs": ["hmac-sha2-256-etm@openssh.com"]},
        {"encryption_algs": ["aes128-ctr"], "mac_algs": ["hmac-sha2-512-etm@openssh.com"]},
    ],
    ids=["gcm", "chacha20", "ctr-etm256", "ctr-etm512"],
)
def test_asyncssh_is_fed_one_packet_at_a_time(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, algs: dict[str, list[str]]
) -> None:
    """Each slice the feeder hands asyncssh completes at most one packet: asyncssh never
    holds packets it has yet to parse, whose bytes it would copy again for every packet
    it slices off before them (a 256 KiB read holds several)."""
    real = asyncssh.SSHServerConnection.data_received
    parsed: list[int] = []  # packets parsed per call, after authentication

    def recording(self: Any, data: bytes, datatype: Any = None) -> None:
        before = self._recv_seq
        real(self, data, datatype)
        if self._auth_complete:
            parsed.append((self._recv_seq - before) & 0xFFFFFFFF)

    monkeypatch.setattr(asyncssh.SSHServerConnection, "data_received", recording)
    data = payload(8 * MIB)
    asyncio.run(upload(server.port, "/f.bin", data, **algs))
    assert (server.inbox() / "f.bin").read_bytes() == data
    assert sum(parsed) > 8 * MIB // (256 << 10)
    assert max(parsed) == 1, sorted(parsed)[-5:]


def test_rekeying_during_an_upload(server: ServerThread) -> None:
    """Key re-exchanges mid-upload change the block and MAC sizes the feeder cuts by."""
    data = payload(6 * MIB + 321)
    asyncio.run(upload(server.port, "/k.bin", data, rekey_bytes=MIB))
    assert (server.inbox() / "k.bin").read_bytes() == data
    [done] = server.uploads
    assert done.sha256 == hashlib.sha256(data).hexdigest()


def test_feeder_passes_reads_whole_when_it_cannot_read_the_state() -> None:
    """Should asyncssh's receive state ever change, reads go in whole, as without it."""
    from ingestd.sources.sftp.server import _feed_packet_by_packet

    class Conn:
        def __init__(self) -> None:
            self.received: list[bytes] = []

        def data_received(self, data: bytes, datatype: object = None) -> None:
            self.received.append(bytes(data))

    conn = Conn()
    _feed_packet_by_packet(conn)  # type: ignore[arg-type]
    conn.data_received(b"x" * 1000)
    conn.data_received(b"y" * 10)
    assert conn.received == [b"x" * 1000, b"y" * 10]
