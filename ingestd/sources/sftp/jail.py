"""The jailed, write-only SFTP filesystem of one session: `/` is `<state_dir>/inbox/<tenant>/`.

asyncssh's stock `chroot=` only rewrites path text (SFTP.md: a relative
symlink plus a rename escapes it). Here every path is normalized against a
virtual `/`, mapped under the tenant's folder, and its resolved real path must
stay inside that folder. Nothing that could leave the jail is offered at all:
no read, no symlink, no hard link, no readlink; attribute changes are accepted
and ignored (WinSCP fails when they error), files get a fixed mode.

Uploads are atomic: bytes go to a hidden temp file in the target folder and
are renamed to the final name only on close, after an fsync; a session that
ends without closing removes its temp files. Disk I/O runs in threads, so one
slow disk write does not stall every other school's session.

The write path is the hot one: a request only copies its bytes into the
upload's current buffer and returns; each full buffer is queued for a thread
(pwrite, then sha256 of the same bytes) while the next ones fill, so the
session waits for the disk only when the disk falls `_QUEUED_WRITES` buffers
behind. An upload's disk operations run one at a time, in order (`_DiskQueue`);
its file descriptor is closed only once none is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import posixpath
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
from asyncssh import (
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    SFTPAttrs,
    SFTPName,
    SFTPVFSAttrs,
)

from ingestd.fsutil import fsync_path
from ingestd.logging import get_logger

TEMP_PREFIX = ".ingestd-upload-"  # hidden from the client and ignored by the inbox watcher
FILE_MODE = 0o640
DIR_MODE = 0o750
MAX_PATH_BYTES = 1024
_DISK_CHECK_BYTES = 16 << 20  # re-check free space every 16 MiB written
_FLUSH_BYTES = 2 << 20  # bytes gathered per disk write (fewer thread hand-offs: less GIL churn)
_QUEUED_WRITES = 2  # full buffers an upload may have queued for (or in) a disk write
_FIRST_BUFFER_BYTES = 64 << 10  # small uploads (most CSVs) never need a whole buffer

# SFTPv5/6 open dispositions (asyncssh.constants)
_ACE4_READ_DATA = 0x1
_DISPOSITION = 0x7
_CREATE_NEW, _CREATE_TRUNCATE, _OPEN_EXISTING, _OPEN_OR_CREATE, _TRUNCATE_EXISTING = range(5)


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
class _Upload:
    fd: int
    temp: Path
    final: Path
    name: str
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


class _DiskQueue:
    """One upload's disk operations, run in threads one at a time and in order.

    Full buffers are queued (`write`) without waiting for the disk; a request waits only
    when `_QUEUED_WRITES` operations are already queued or running. A failed operation
    fails the upload and drops what is still queued. `close_when_idle` closes the
    descriptor and removes the temp file once no operation runs (never under a running
    pwrite: the descriptor's number could be reused by another file meanwhile).
    """

    def __init__(self, upload: _Upload) -> None:
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


def _deny(what: str) -> asyncssh.SFTPPermissionDenied:
    return asyncssh.SFTPPermissionDenied(f"{what} is not allowed on this upload-only server")


class JailedSFTPServer(asyncssh.SFTPServer):
    """One SFTP session of one tenant: write-only, jailed, atomic uploads."""

    def __init__(
        self,
        chan: asyncssh.SSHServerChannel,
        *,
        tenant: str,
        root: Path,
        limits: UploadLimits,
        on_upload: Callable[[CompletedUpload], None] | None = None,
        on_activity: Callable[[], None] | None = None,
        on_exit: Callable[[JailedSFTPServer], None] | None = None,
    ) -> None:
        super().__init__(chan)
        self.on_activity = on_activity
        self.on_exit = on_exit
        self.tenant = tenant
        self.root = Path(os.path.realpath(root))
        self.limits = limits
        self.on_upload = on_upload
        self.log = get_logger(tenant=tenant, conn=chan.get_extra_info("peername", ("?", 0))[0])
        self._uploads: set[_Upload] = set()  # open
        self._finishing: set[_Upload] = set()  # being closed (fsync, rename)

    # --- paths -------------------------------------------------------------------------

    def _virtual(self, path: bytes) -> str:
        """The normalized client path, always absolute under the virtual `/`."""
        self._active()
        if len(path) > MAX_PATH_BYTES or b"\0" in path:
            raise asyncssh.SFTPInvalidFilename("invalid path")
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            raise asyncssh.SFTPInvalidFilename("paths must be UTF-8") from None
        return posixpath.normpath("/" + text.lstrip("/"))  # ".." cannot climb above "/"

    def _real(self, path: bytes, *, hidden_ok: bool = False) -> tuple[str, Path]:
        """(virtual path, real path) after proving the real path lies inside the jail."""
        virtual = self._virtual(path)
        name = posixpath.basename(virtual)
        if not hidden_ok and name.startswith(TEMP_PREFIX):
            raise asyncssh.SFTPNoSuchFile("no such file")
        real = self.root / virtual.lstrip("/") if virtual != "/" else self.root
        # Containment on the resolved path (the parent, for names that may not exist yet).
        parent = os.path.realpath(real.parent if real != self.root else real)
        if parent != str(self.root) and not parent.startswith(str(self.root) + os.sep):
            self._refuse("path outside the inbox", virtual)
            raise asyncssh.SFTPNoSuchFile("no such file")
        if real != self.root and os.path.islink(real):
            self._refuse("symbolic link", virtual)
            raise asyncssh.SFTPNoSuchFile("no such file")
        return virtual, real

    def _refuse(self, what: str, path: str | None = None) -> None:
        self.log.warning("sftp.refused", operation=what, path=path)

    def map_path(self, path: bytes) -> bytes:  # used by asyncssh helpers we do not override
        return os.fsencode(self._real(path)[1])

    def reverse_map_path(self, path: bytes) -> bytes:
        real = os.path.realpath(os.fsdecode(path))
        if real == str(self.root):
            return b"/"
        if not real.startswith(str(self.root) + os.sep):
            raise asyncssh.SFTPNoSuchFile("no such file")
        return ("/" + os.path.relpath(real, self.root)).encode()

    async def realpath(self, path: bytes) -> bytes:
        """The canonical client path (no symlinks can exist inside the jail)."""
        return self._virtual(path).encode()

    # --- attributes ----------------------------------------------------------------------

    def _attrs(self, st: os.stat_result) -> SFTPAttrs:
        attrs = SFTPAttrs.from_local(st)
        attrs.uid = attrs.gid = 0
        attrs.owner = attrs.group = "ingestd"  # never the host's user names
        return attrs

    async def stat(self, path: bytes) -> SFTPAttrs:
        """stat of a file or folder inside the jail; a clean "no such file" otherwise."""
        return await self.lstat(path)

    async def lstat(self, path: bytes) -> SFTPAttrs:
        """lstat: symbolic links are never followed."""
        _, real = self._real(path)
        try:
            return self._attrs(await asyncio.to_thread(os.lstat, real))
        except FileNotFoundError:
            raise asyncssh.SFTPNoSuchFile("no such file") from None
        except NotADirectoryError:
            raise asyncssh.SFTPNoSuchFile("no such file") from None

    async def fstat(self, file_obj: object) -> SFTPAttrs:
        """fstat of an open upload (its size so far)."""
        upload = self._upload(file_obj)
        await self._flush(upload)
        st = await self._disk(upload, os.fstat, upload.fd)
        assert isinstance(st, os.stat_result)
        return self._attrs(st)

    def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        """Accepted and ignored: clients set times and modes; files keep a fixed mode."""
        self._real(path)

    def lsetstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        """Accepted and ignored."""
        self._real(path)

    def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        """Accepted and ignored (a size change included: uploads are written, not resized)."""
        self._upload(file_obj)

    async def statvfs(self, path: bytes) -> SFTPVFSAttrs:
        """The filesystem of the inbox."""
        self._real(path)
        return SFTPVFSAttrs.from_local(await asyncio.to_thread(os.statvfs, self.root))

    async def fstatvfs(self, file_obj: object) -> SFTPVFSAttrs:
        """The filesystem of the inbox."""
        self._upload(file_obj)
        return SFTPVFSAttrs.from_local(await asyncio.to_thread(os.statvfs, self.root))

    # --- folders ----------------------------------------------------------------------------

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        """The folder's entries, without uploads in progress."""
        _, real = self._real(path)

        def listing() -> list[tuple[str, os.stat_result]]:
            out = []
            with os.scandir(real) as entries:
                for entry in entries:
                    if entry.name.startswith(TEMP_PREFIX):
                        continue
                    try:
                        out.append((entry.name, entry.stat(follow_symlinks=False)))
                    except FileNotFoundError:
                        continue
            return out

        try:
            entries = await asyncio.to_thread(listing)
        except (FileNotFoundError, NotADirectoryError):
            raise asyncssh.SFTPNoSuchFile("no such folder") from None
        here = await asyncio.to_thread(os.stat, real)
        for name, st in [(".", here), ("..", here), *sorted(entries)]:
            entry = SFTPName(name.encode(), attrs=self._attrs(st))
            self.format_longname(entry)
            yield entry

    async def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        """A folder inside the inbox, with a fixed mode."""
        _, real = self._real(path)
        try:
            await asyncio.to_thread(os.mkdir, real, DIR_MODE)
        except FileExistsError:
            raise asyncssh.SFTPFileAlreadyExists("already exists") from None
        except FileNotFoundError:
            raise asyncssh.SFTPNoSuchFile("no such folder") from None

    async def rmdir(self, path: bytes) -> None:
        """Remove an empty folder (never the inbox itself)."""
        virtual, real = self._real(path)
        if virtual == "/":
            raise _deny("removing the inbox")
        try:
            await asyncio.to_thread(os.rmdir, real)
        except FileNotFoundError:
            raise asyncssh.SFTPNoSuchFile("no such folder") from None
        except OSError:
            raise asyncssh.SFTPFailure("the folder is not empty") from None

    # --- files -------------------------------------------------------------------------------

    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> object:
        """Open for writing only: a hidden temp file, renamed into place on close."""
        virtual, final = self._real(path)
        if pflags & FXF_READ or not pflags & FXF_WRITE:
            self._refuse("read", virtual)
            raise _deny("reading")
        if pflags & FXF_APPEND:
            raise asyncssh.SFTPOpUnsupported("append (resume) is not supported; upload again")
        return await self._start_upload(
            virtual,
            final,
            create=bool(pflags & FXF_CREAT),
            exclusive=bool(pflags & FXF_EXCL),
            truncate=bool(pflags & FXF_TRUNC),
        )

    async def open56(
        self, path: bytes, desired_access: int, flags: int, attrs: SFTPAttrs
    ) -> object:
        """SFTP v5/6 open, mapped onto the same rules."""
        virtual, final = self._real(path)
        if desired_access & _ACE4_READ_DATA:
            self._refuse("read", virtual)
            raise _deny("reading")
        disposition = flags & _DISPOSITION
        return await self._start_upload(
            virtual,
            final,
            create=disposition != _OPEN_EXISTING and disposition != _TRUNCATE_EXISTING,
            exclusive=disposition == _CREATE_NEW,
            truncate=disposition in (_CREATE_TRUNCATE, _TRUNCATE_EXISTING),
        )

    async def _start_upload(
        self, virtual: str, final: Path, *, create: bool, exclusive: bool, truncate: bool
    ) -> _Upload:
        if virtual == "/" or final.is_dir():
            raise asyncssh.SFTPFileIsADirectory("is a folder")
        exists = final.exists()
        if exclusive and exists:
            raise asyncssh.SFTPFileAlreadyExists("already exists")
        if exists and not truncate:
            # Every upload is a whole new file (nothing is ever read back), so writing into
            # part of an existing one cannot be honoured.
            raise asyncssh.SFTPOpUnsupported(
                "changing part of an existing file is not supported; upload the whole file"
            )
        if not exists and not create:
            raise asyncssh.SFTPNoSuchFile("no such file")
        if not final.parent.is_dir():
            raise asyncssh.SFTPNoSuchFile("no such folder")
        if self.open_uploads >= self.limits.max_open_files:
            self._refuse("too many open files", virtual)
            raise asyncssh.SFTPFailure(
                f"at most {self.limits.max_open_files} files may be open for upload at once "
                "in one session; close one first"
            )
        await self._check_space(0)
        temp = final.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        fd = await asyncio.to_thread(
            os.open, temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE
        )
        upload = _Upload(fd=fd, temp=temp, final=final, name=virtual)
        self._uploads.add(upload)
        return upload

    def _active(self) -> None:
        if self.on_activity is not None:
            self.on_activity()

    def _upload(self, file_obj: object) -> _Upload:
        self._active()
        if not isinstance(file_obj, _Upload) or file_obj not in self._uploads:
            raise asyncssh.SFTPInvalidHandle("invalid handle")
        return file_obj

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        """Refused: the inbox is write-only (this also disables copy-data)."""
        self._refuse("read")
        raise _deny("reading")

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        """Write at `offset` (off the event loop), within the file, inbox and disk limits."""
        upload = self._upload(file_obj)
        size = len(data)
        end = offset + size
        if upload.failed:
            raise asyncssh.SFTPFailure(upload.failed)
        try:
            if end > self.limits.max_file_bytes:
                self._refuse("file over max_file_bytes", upload.name)
                raise asyncssh.SFTPQuotaExceeded(
                    f"file too large: the limit is {self.limits.max_file_bytes} bytes"
                )
            grow = end - upload.size
            if grow > 0:
                upload.since_disk_check += grow
                if upload.since_disk_check >= _DISK_CHECK_BYTES:
                    upload.since_disk_check = 0
                    await self._check_space(grow)
        except asyncssh.SFTPError as exc:
            upload.failed = exc.reason
            raise
        # Clients write in order, 32-256 KiB a request: gather contiguous writes and queue
        # them for the disk _FLUSH_BYTES at a time without waiting for it (the bytes are
        # safe only after close() anyway: fsync, then rename; a failed write fails the upload).
        filled = upload.filled
        if filled and (offset != upload.pending_at + filled or filled + size > _FLUSH_BYTES):
            await self._flush(upload)
            filled = 0
        if not filled:
            upload.pending_at = offset
        if size >= _FLUSH_BYTES:  # larger than a buffer: queued as it is
            await upload.disk.wait(_QUEUED_WRITES - 1)
            upload.disk.submit(_write, upload, offset, data)
        else:
            buffer = upload.buffer
            need = filled + size
            if buffer is None or len(buffer) < need:
                if upload.disk.buffers or need >= _FIRST_BUFFER_BYTES:
                    grown = await upload.disk.buffer()
                else:  # the first bytes of an upload: a small buffer
                    grown = bytearray(_FIRST_BUFFER_BYTES)
                if filled:
                    assert buffer is not None
                    memoryview(grown)[:filled] = memoryview(buffer)[:filled]
                upload.buffer = buffer = grown
            # Through a memoryview: one copy (bytearray slice assignment from bytes makes a
            # temporary bytearray first, a second copy).
            memoryview(buffer)[filled:need] = data
            upload.filled = need
            if need == _FLUSH_BYTES:
                await self._flush(upload)
        if end > upload.size:
            upload.size = end
        return size

    async def _flush(self, upload: _Upload) -> None:
        """Queue the gathered bytes for the disk (waiting only while the queue is full)."""
        if upload.filled:
            assert upload.buffer is not None
            buffer, size = upload.buffer, upload.filled
            upload.buffer, upload.filled = None, 0
            await upload.disk.wait(_QUEUED_WRITES - 1)
            reuse = buffer if len(buffer) == _FLUSH_BYTES else None
            upload.disk.submit(
                _write, upload, upload.pending_at, memoryview(buffer)[:size], reuse=reuse
            )

    async def _disk(self, upload: _Upload, fn: Callable[..., object], *args: object) -> object:
        """fn(*args) in a thread once the queued writes are done; a failure fails the upload
        (after a failed fsync, Linux may report the next one as fine with the data lost)."""
        result = upload.disk.submit(fn, *args)
        await upload.disk.wait()
        return result.result()

    async def _check_space(self, grow: int) -> None:
        free, used = await asyncio.to_thread(self._disk_and_inbox)
        if free - grow < self.limits.min_free_bytes:
            self.log.error("sftp.disk_floor", free_bytes=free)
            raise asyncssh.SFTPNoSpaceOnFilesystem("the server's disk is full; try again later")
        if used + grow > self.limits.max_inbox_bytes:
            self._refuse("inbox over max_inbox_bytes")
            raise asyncssh.SFTPQuotaExceeded("this school's inbox is full")

    def _disk_and_inbox(self) -> tuple[int, int]:
        vfs = os.statvfs(self.root)
        used = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                try:
                    used += os.lstat(os.path.join(folder, name)).st_size
                except FileNotFoundError:
                    continue
        return vfs.f_bavail * vfs.f_frsize, used

    async def fsync(self, file_obj: object) -> None:
        """fsync the upload's temp file."""
        upload = self._upload(file_obj)
        await self._flush(upload)
        await self._disk(upload, os.fsync, upload.fd)

    async def close(self, file_obj: object) -> None:
        """Finish an upload: fsync, rename into place, fsync the folder, tell the watcher."""
        upload = self._upload(file_obj)
        if upload.failed or self._session_over():
            # A write failed, or the connection went away with the file still open (asyncssh
            # closes open handles when a session ends): never publish a partial file.
            self._abandon(upload)
            if upload.failed:
                raise asyncssh.SFTPFailure(f"upload discarded: {upload.failed}")
            return
        # Closing: the session's end no longer abandons it, but it is still in flight (a
        # stopping server waits for it).
        self._uploads.discard(upload)
        self._finishing.add(upload)
        try:
            await self._finish(upload)
        finally:
            self._finishing.discard(upload)

    async def _finish(self, upload: _Upload) -> None:
        try:
            await self._flush(upload)
            await self._disk(upload, os.fsync, upload.fd)
        except BaseException:  # a failed write or fsync, or cancelled: never published
            upload.disk.close_when_idle()
            self.log.info(
                "sftp.upload_abandoned", file=upload.name, bytes=upload.size, reason=upload.failed
            )
            raise
        os.close(upload.fd)
        if not upload.in_order or upload.hashed != upload.size:
            upload.digest = await asyncio.to_thread(_hash_file, upload.temp)
        await asyncio.to_thread(_publish, upload.temp, upload.final)
        done = CompletedUpload(
            tenant=self.tenant,
            path=upload.final,
            name=upload.name,
            size=upload.size,
            sha256=upload.digest.hexdigest(),
            seconds=round(time.monotonic() - upload.started, 3),
        )
        self.log.info(
            "sftp.upload_completed",
            file=done.name,
            bytes=done.size,
            sha256=done.sha256,
            seconds=done.seconds,
        )
        if self.on_upload is not None:
            self.on_upload(done)

    async def remove(self, path: bytes) -> None:
        """Remove a file (clients delete before renaming over it)."""
        virtual, real = self._real(path)
        if virtual == "/" or real.is_dir():
            raise asyncssh.SFTPFileIsADirectory("is a folder")
        try:
            await asyncio.to_thread(os.remove, real)
        except FileNotFoundError:
            raise asyncssh.SFTPNoSuchFile("no such file") from None

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        """Rename inside the jail; replaces an existing file (clients overwrite this way)."""
        await self._rename(oldpath, newpath)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        """posix-rename@openssh.com: the same, atomically replacing the target."""
        await self._rename(oldpath, newpath)

    async def _rename(self, oldpath: bytes, newpath: bytes) -> None:
        old_virtual, old = self._real(oldpath)
        new_virtual, new = self._real(newpath)
        if old_virtual == "/" or new_virtual == "/":
            raise _deny("renaming the inbox")
        if not os.path.lexists(old):
            raise asyncssh.SFTPNoSuchFile("no such file")
        if new.is_dir() and not old.is_dir():
            raise asyncssh.SFTPFileIsADirectory("the target is a folder")
        if old.is_dir() and await asyncio.to_thread(_holds_uploads, old):
            raise asyncssh.SFTPFailure("a file is being uploaded in this folder; try later")
        try:
            await asyncio.to_thread(os.replace, old, new)
        except OSError:
            raise asyncssh.SFTPFailure("cannot rename") from None
        await asyncio.to_thread(fsync_path, new.parent)

    def readlink(self, path: bytes) -> bytes:
        """Refused: no links exist here."""
        self._refuse("readlink")
        raise _deny("reading links")

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        """Refused: a link is the classic way out of a jail."""
        self._refuse("symlink")
        raise _deny("creating symbolic links")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        """Refused."""
        self._refuse("link")
        raise _deny("creating hard links")

    @property
    def open_uploads(self) -> int:
        """Uploads opened and not yet closed, or being closed (fsync, rename)."""
        return len(self._uploads) + len(self._finishing)

    def exit(self) -> None:
        """The session ended: uploads never closed leave nothing behind."""
        for upload in list(self._uploads):
            self._abandon(upload)
        if self.on_exit is not None:
            self.on_exit(self)

    def _session_over(self) -> bool:
        # asyncssh has no public "is this channel closing": its states say whether the
        # client is gone (a close request from a live client arrives on an open channel).
        chan = self.channel
        return getattr(chan, "_recv_state", "open") in ("eof", "closed") or getattr(
            chan, "_send_state", "open"
        ) in ("close_pending", "closed")

    def _abandon(self, upload: _Upload) -> None:
        if upload not in self._uploads:
            return
        self._uploads.discard(upload)
        upload.disk.close_when_idle()
        self.log.info(
            "sftp.upload_abandoned", file=upload.name, bytes=upload.size, reason=upload.failed
        )


def _write(upload: _Upload, offset: int, data: bytes | memoryview) -> None:
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


def _discard(upload: _Upload) -> None:
    """Close the upload's descriptor and remove its temp file (no thread uses them now)."""
    with contextlib.suppress(OSError):
        os.close(upload.fd)
    upload.temp.unlink(missing_ok=True)


def _holds_uploads(folder: Path) -> bool:
    """True when an upload in progress (of any session) writes inside `folder`."""
    return any(name.startswith(TEMP_PREFIX) for _, _, files in os.walk(folder) for name in files)


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
