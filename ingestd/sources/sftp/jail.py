"""The jailed, write-only SFTP filesystem of one session: `/` is `<state_dir>/inbox/<tenant>/`.

asyncssh's stock `chroot=` only rewrites path text (SFTP.md: a relative
symlink plus a rename escapes it). Here every path is normalized against a
virtual `/`, mapped under the tenant's folder, and its resolved real path must
stay inside that folder. Nothing that could leave the jail is offered at all:
no read, no symlink, no hard link, no readlink; attribute changes are accepted
and ignored (WinSCP fails when they error), files get a fixed mode.

Which files may be opened for writing, and how, is decided here; each one opened
is an `Upload` (uploads.py: the write path, then fsync and rename on close, or
abandon when the session ends without closing it). Disk I/O runs in threads, so
one slow disk operation does not stall every other school's session.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
from collections.abc import AsyncIterator, Callable
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
from ingestd.sources.sftp.uploads import (
    FILE_MODE,
    TEMP_PREFIX,
    CompletedUpload,
    Upload,
    UploadLimits,
    remove_stale_uploads,
)

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "MAX_PATH_BYTES",
    "TEMP_PREFIX",
    "CompletedUpload",
    "JailedSFTPServer",
    "UploadLimits",
    "remove_stale_uploads",
]

DIR_MODE = 0o750
MAX_PATH_BYTES = 1024

# SFTPv5/6 open dispositions (asyncssh.constants)
_ACE4_READ_DATA = 0x1
_DISPOSITION = 0x7
_CREATE_NEW, _CREATE_TRUNCATE, _OPEN_EXISTING, _OPEN_OR_CREATE, _TRUNCATE_EXISTING = range(5)


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
        self._uploads: set[Upload] = set()  # open
        self._finishing: set[Upload] = set()  # being closed (fsync, rename)

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
        return self._attrs(await self._upload(file_obj).fstat())

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
    ) -> Upload:
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
        upload = await Upload.start(
            final, virtual, root=self.root, limits=self.limits, log=self.log
        )
        self._uploads.add(upload)
        return upload

    def _active(self) -> None:
        if self.on_activity is not None:
            self.on_activity()

    def _upload(self, file_obj: object) -> Upload:
        self._active()
        if not isinstance(file_obj, Upload) or file_obj not in self._uploads:
            raise asyncssh.SFTPInvalidHandle("invalid handle")
        return file_obj

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        """Refused: the inbox is write-only (this also disables copy-data)."""
        self._refuse("read")
        raise _deny("reading")

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        """Write at `offset` (off the event loop), within the file, inbox and disk limits."""
        return await self._upload(file_obj).write(offset, data)

    async def fsync(self, file_obj: object) -> None:
        """fsync the upload's temp file."""
        await self._upload(file_obj).fsync()

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

    async def _finish(self, upload: Upload) -> None:
        done = await upload.finish(self.tenant)
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

    def _abandon(self, upload: Upload) -> None:
        if upload not in self._uploads:
            return
        self._uploads.discard(upload)
        upload.abandon()


def _holds_uploads(folder: Path) -> bool:
    """True when an upload in progress (of any session) writes inside `folder`."""
    return any(name.startswith(TEMP_PREFIX) for _, _, files in os.walk(folder) for name in files)
