"""One file being uploaded over SFTP, from open to publish or abandon.

Uploads are atomic: bytes go to a hidden temp file in the target folder and
are renamed to the final name only on close, after an fsync; an upload
abandoned (a failed write, a session that ends without closing) removes its
temp file. Disk I/O runs in threads, so one slow disk write does not stall
every other school's session.

The write path is the hot one: a request only copies its bytes into the
upload's current buffer and returns; each full buffer is queued for a thread
(pwrite, then sha256 of the same bytes) while the next ones fill, so the
session waits for the disk only when the disk falls `_QUEUED_WRITES` buffers
behind. An upload's disk operations run one at a time, in order (`_DiskQueue`);
its file descriptor is closed only once none is running.

Also here: the limits an upload is held to (file size, inbox size, free disk)
and the removal of temp files a previous run left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import structlog

from ingestd.fsutil import fsync_path

TEMP_PREFIX = ".ingestd-upload-"  # hidden from the client and ignored by the inbox watcher
FILE_MODE = 0o640
_DISK_CHECK_BYTES = 16 << 20  # re-check free space every 16 MiB written
_FLUSH_BYTES = 2 << 20  # bytes gathered per disk write (fewer thread hand-offs: less GIL churn)
_QUEUED_WRITES = 2  # full buffers an upload may have queued for (or in) a disk write
_FIRST_BUFFER_BYTES = 64 << 10  # small uploads (most CSVs) never need a whole buffer


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """What one upload, one inbox and the disk may hold."""

    max_file_bytes: int = 2 << 30
    max_inbox_bytes: int = 10 << 30
    min_free_bytes: int = 1 << 30
    max_open_files: int = 16  # per session: each open upload holds write buffers


@dataclass(frozen=True, slots=True)
class CompletedUpload:
    """An upload renamed into the inbox: what the audit log and the watcher are told."""

    tenant: str
    path: Path
    name: str  # as the client sees it, e.g. /users.csv
    size: int
    sha256: str
    seconds: float


@dataclass(slots=True, eq=False)  # identity: each open handle is its own upload
class Upload:
    """One open upload: its temp file, buffers and disk queue (`start` opens one)."""

    fd: int
    temp: Path
    final: Path
    name: str
    root: Path  # the tenant's inbox, whose size and disk the limits apply to
    limits: UploadLimits
    log: structlog.typing.FilteringBoundLogger
    started: float = field(default_factory=time.monotonic)
    size: int = 0  # the end of the furthest write received (kept by the event loop)
    since_disk_check: int = 0
    # Kept by the thread doing the disk operation in flight (read by the loop once it is done):
    written: int = 0
    hashed: int = 0  # bytes fed to `digest`, in order
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)  # type: ignore[name-defined]
    in_order: bool = True
    # Contiguous bytes not yet handed to the disk: buffer[:filled] belongs at offset pending_at.
    buffer: bytearray | None = None
    filled: int = 0
    pending_at: int = 0
    disk: _DiskQueue = field(init=False)
    failed: str | None = None  # why a write failed: the upload is never published

    def __post_init__(self) -> None:
        self.disk = _DiskQueue(self)

    @classmethod
    async def start(
        cls,
        final: Path,
        name: str,
        *,
        root: Path,
        limits: UploadLimits,
        log: structlog.typing.FilteringBoundLogger,
    ) -> Upload:
        """Check the disk and inbox, then open a hidden temp file next to `final`."""
        await check_space(root, limits, log, 0)
        temp = final.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        fd = await asyncio.to_thread(
            os.open, temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE
        )
        return cls(fd=fd, temp=temp, final=final, name=name, root=root, limits=limits, log=log)

    async def write(self, offset: int, data: bytes) -> int:
        """Write at `offset` (off the event loop), within the file, inbox and disk limits."""
        size = len(data)
        end = offset + size
        if self.failed:
            raise asyncssh.SFTPFailure(self.failed)
        try:
            if end > self.limits.max_file_bytes:
                self.log.warning(
                    "sftp.refused", operation="file over max_file_bytes", path=self.name
                )
                raise asyncssh.SFTPQuotaExceeded(
                    f"file too large: the limit is {self.limits.max_file_bytes} bytes"
                )
            grow = end - self.size
            if grow > 0:
                self.since_disk_check += grow
                if self.since_disk_check >= _DISK_CHECK_BYTES:
                    self.since_disk_check = 0
                    await check_space(self.root, self.limits, self.log, grow)
        except asyncssh.SFTPError as exc:
            self.failed = exc.reason
            raise
        # Clients write in order, 32-256 KiB a request: gather contiguous writes and queue
        # them for the disk _FLUSH_BYTES at a time without waiting for it (the bytes are
        # safe only after close() anyway: fsync, then rename; a failed write fails the upload).
        filled = self.filled
        if filled and (offset != self.pending_at + filled or filled + size > _FLUSH_BYTES):
            await self.flush()
            filled = 0
        if not filled:
            self.pending_at = offset
        if size >= _FLUSH_BYTES:  # larger than a buffer: queued as it is
            await self.disk.wait(_QUEUED_WRITES - 1)
            self.disk.submit(_write, self, offset, data)
        else:
            buffer = self.buffer
            need = filled + size
            if buffer is None or len(buffer) < need:
                if self.disk.buffers or need >= _FIRST_BUFFER_BYTES:
                    grown = await self.disk.buffer()
                else:  # the first bytes of an upload: a small buffer
                    grown = bytearray(_FIRST_BUFFER_BYTES)
                if filled:
                    assert buffer is not None
                    memoryview(grown)[:filled] = memoryview(buffer)[:filled]
                self.buffer = buffer = grown
            # Through a memoryview: one copy (bytearray slice assignment from bytes makes a
            # temporary bytearray first, a second copy).
            memoryview(buffer)[filled:need] = data
            self.filled = need
            if need == _FLUSH_BYTES:
                await self.flush()
        if end > self.size:
            self.size = end
        return size

    async def flush(self) -> None:
        """Queue the gathered bytes for the disk (waiting only while the queue is full)."""
        if self.filled:
            assert self.buffer is not None
            buffer, size = self.buffer, self.filled
            self.buffer, self.filled = None, 0
            await self.disk.wait(_QUEUED_WRITES - 1)
            reuse = buffer if len(buffer) == _FLUSH_BYTES else None
            self.disk.submit(_write, self, self.pending_at, memoryview(buffer)[:size], reuse=reuse)

    async def run(self, fn: Callable[..., object], *args: object) -> object:
        """fn(*args) in a thread once the queued writes are done; a failure fails the upload
        (after a failed fsync, Linux may report the next one as fine with the data lost)."""
        result = self.disk.submit(fn, *args)
        await self.disk.wait()
        return result.result()

    async def fstat(self) -> os.stat_result:
        """fstat of the temp file, every byte received included."""
        await self.flush()
        st = await self.run(os.fstat, self.fd)
        assert isinstance(st, os.stat_result)
        return st

    async def fsync(self) -> None:
        """fsync the temp file, every byte received included."""
        await self.flush()
        await self.run(os.fsync, self.fd)

    async def finish(self, tenant: str) -> CompletedUpload:
        """fsync, rename into place, fsync the folder; abandoned if the fsync fails."""
        try:
            await self.fsync()
        except BaseException:  # a failed write or fsync, or cancelled: never published
            self.abandon()
            raise
        os.close(self.fd)
        if not self.in_order or self.hashed != self.size:
            self.digest = await asyncio.to_thread(_hash_file, self.temp)
        await asyncio.to_thread(_publish, self.temp, self.final)
        done = CompletedUpload(
            tenant=tenant,
            path=self.final,
            name=self.name,
            size=self.size,
            sha256=self.digest.hexdigest(),
            seconds=round(time.monotonic() - self.started, 3),
        )
        self.log.info(
            "sftp.upload_completed",
            file=done.name,
            bytes=done.size,
            sha256=done.sha256,
            seconds=done.seconds,
        )
        return done

    def abandon(self) -> None:
        """Never published: the temp file is removed once no disk operation runs."""
        self.disk.close_when_idle()
        self.log.info("sftp.upload_abandoned", file=self.name, bytes=self.size, reason=self.failed)


class _DiskQueue:
    """One upload's disk operations, run in threads one at a time and in order.

    Full buffers are queued (`write`) without waiting for the disk; a request waits only
    when `_QUEUED_WRITES` operations are already queued or running. A failed operation
    fails the upload and drops what is still queued. `close_when_idle` closes the
    descriptor and removes the temp file once no operation runs (never under a running
    pwrite: the descriptor's number could be reused by another file meanwhile).
    """

    def __init__(self, upload: Upload) -> None:
        self.upload = upload
        # (function, arguments, buffer to reuse once done, the caller's future)
        self.queue: deque[
            tuple[Callable[..., object], tuple[object, ...], bytearray | None, asyncio.Future]
        ] = deque()
        self.running: asyncio.Future[object] | None = None
        self.free: list[bytearray] = []  # written buffers, ready to be filled again
        self.buffers = 0  # full-size buffers made for this upload
        self.waiters: list[asyncio.Future[None]] = []
        self.closing = False

    @property
    def pending(self) -> int:
        """Operations queued or running."""
        return len(self.queue) + (self.running is not None)

    def submit(
        self, fn: Callable[..., object], *args: object, reuse: bytearray | None = None
    ) -> asyncio.Future[object]:
        """Queue fn(*args) for a thread; its result (or exception) lands in the future."""
        result: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        # Failures are read from `upload.failed`: an unread exception is not an error here.
        result.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.queue.append((fn, args, reuse, result))
        if self.running is None:
            self._next()
        return result

    async def wait(self, pending: int = 0) -> None:
        """Until at most `pending` operations are queued or running; raise if one failed."""
        while self.pending > max(pending, 0):
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            await waiter
        if self.upload.failed:
            raise asyncssh.SFTPFailure(self.upload.failed)

    async def buffer(self) -> bytearray:
        """A full-size buffer to fill: a written one, else a new one (at most
        `_QUEUED_WRITES + 1` per upload: then wait for a write to finish)."""
        while not self.free and self.buffers > _QUEUED_WRITES and self.pending:
            await self.wait(self.pending - 1)
        if self.free:
            return self.free.pop()
        self.buffers += 1
        return bytearray(_FLUSH_BYTES)

    def close_when_idle(self) -> None:
        """Drop what is queued; close the descriptor and remove the temp file once no
        operation runs (once: a second close could hit a reused descriptor number)."""
        if self.closing:
            return
        self.closing = True
        self._drop_queued()
        if self.running is None:
            _discard(self.upload)

    def _drop_queued(self) -> None:
        for _, _, _, result in self.queue:
            result.cancel()
        self.queue.clear()

    def _next(self) -> None:
        fn, args, reuse, result = self.queue.popleft()
        running = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        running.add_done_callback(lambda _: self._done(running, reuse, result))
        self.running = running

    def _done(
        self, running: asyncio.Future[object], reuse: bytearray | None, result: asyncio.Future
    ) -> None:
        self.running = None
        if reuse is not None:
            self.free.append(reuse)
        exc = None if running.cancelled() else running.exception()
        if exc is not None and not self.upload.failed:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            self.upload.failed = f"the server could not save the file ({why})"
        if not result.done():
            if exc is not None:
                result.set_exception(exc)
            else:
                result.set_result(running.result())
        if self.upload.failed:
            self._drop_queued()  # nothing more is written to a failed upload
        if self.closing:
            _discard(self.upload)
        elif self.queue:
            self._next()
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


async def check_space(
    root: Path, limits: UploadLimits, log: structlog.typing.FilteringBoundLogger, grow: int
) -> None:
    """Refuse `grow` more bytes when the disk would fall under its floor or the inbox
    over its size."""
    free, used = await asyncio.to_thread(_disk_and_inbox, root)
    if free - grow < limits.min_free_bytes:
        log.error("sftp.disk_floor", free_bytes=free)
        raise asyncssh.SFTPNoSpaceOnFilesystem("the server's disk is full; try again later")
    if used + grow > limits.max_inbox_bytes:
        log.warning("sftp.refused", operation="inbox over max_inbox_bytes", path=None)
        raise asyncssh.SFTPQuotaExceeded("this school's inbox is full")


def _disk_and_inbox(root: Path) -> tuple[int, int]:
    vfs = os.statvfs(root)
    used = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                used += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue
    return vfs.f_bavail * vfs.f_frsize, used


def _write(upload: Upload, offset: int, data: bytes | memoryview) -> None:
    """pwrite all of `data` (in a thread), and hash it on the way while the client writes in
    order (it nearly always does); pwrite and sha256 release the GIL."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        written = os.pwrite(upload.fd, view[done:], offset + done)
        if written <= 0:
            raise OSError(errno.ENOSPC, "no space left on device")
        done += written
    upload.written += done
    if upload.in_order and offset == upload.hashed:
        upload.digest.update(view)
        upload.hashed = offset + done
    else:
        upload.in_order = False  # hashed again from disk on close


def _discard(upload: Upload) -> None:
    """Close the upload's descriptor and remove its temp file (no thread uses them now)."""
    with contextlib.suppress(OSError):
        os.close(upload.fd)
    upload.temp.unlink(missing_ok=True)


def remove_stale_uploads(root: Path) -> int:
    """Remove the temp files of uploads a previous run never finished; returns how many."""
    count = 0
    for folder, _, files in os.walk(root):
        for name in files:
            if name.startswith(TEMP_PREFIX):
                Path(folder, name).unlink(missing_ok=True)
                count += 1
    return count


def _hash_file(path: Path) -> hashlib._Hash:  # type: ignore[name-defined]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest


def _publish(temp: Path, final: Path) -> None:
    os.replace(temp, final)
    fsync_path(final.parent)
