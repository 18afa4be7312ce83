"""ArchiveWriter: a pull's pages written beside the event loop, in arrival order, failures
reported at drain (base.py). The pollers' own tests check what the archive holds."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import threading
from pathlib import Path

import httpx
import pytest

from ingestd.sources.pollers.base import ArchiveWriter, PageArchive, PullError
from ingestd.sources.pollers.http import ApiResponse


class Noting(PageArchive):
    """A real PageArchive that notes which thread wrote each page, and can be slow once."""

    def __init__(self, folder: Path | None, slow_first: float = 0.0) -> None:
        super().__init__(folder)
        self.threads: list[int] = []
        self.slow_first = slow_first

    def record(self, collection: str, url: str, status: int, body: bytes, gzipped=None) -> None:
        self.threads.append(threading.get_ident())
        if self.slow_first and len(self.threads) == 1:
            threading.Event().wait(self.slow_first)  # a disk that stalls on the first write
        super().record(collection, url, status, body, gzipped)


def page(n: int, *, gzipped: bool = False) -> ApiResponse:
    body = json.dumps({"n": n, "rows": ["x" * 50] * 200}).encode()
    return ApiResponse(
        200,
        f"https://sis.example/api?page={n}",
        httpx.Headers(),
        body,
        None,
        gzip.compress(body) if gzipped else None,
    )


def read_archive(folder: Path) -> list[tuple[str, int]]:
    out = []
    for path in sorted(folder.iterdir()):
        meta, body = gzip.decompress(path.read_bytes()).split(b"\n", 1)
        out.append((path.name, json.loads(body)["n"]))
        assert json.loads(meta)["status"] == 200
    return out


def test_pages_are_written_off_the_loop_in_arrival_order(tmp_path: Path) -> None:
    pages = Noting(tmp_path / "pages", slow_first=1.0)

    async def run() -> tuple[int, list[float]]:
        writer = ArchiveWriter(pages)
        ticks: list[float] = []
        loop = asyncio.get_running_loop()

        async def ticker() -> None:  # the loop must stay free while the first page stalls
            for _ in range(20):
                ticks.append(loop.time())
                await asyncio.sleep(0.01)

        beat = asyncio.create_task(ticker())
        for n in range(12):  # more than AHEAD: keep() waits for room, never for the disk
            await writer.keep("users", page(n, gzipped=n % 2 == 1))
        await writer.drain()
        await beat
        return threading.get_ident(), ticks

    loop_thread, ticks = asyncio.run(run())
    assert loop_thread not in pages.threads and len(pages.threads) == 12
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.6  # the stall was 1 s
    names = read_archive(tmp_path / "pages")
    assert [n for _, n in names] == list(range(12))
    assert names[0][0] == "000001-users.json.gz"


def test_a_page_that_cannot_be_written_fails_the_pull_at_drain(tmp_path: Path) -> None:
    folder = tmp_path / "pages"
    pages = PageArchive(folder)
    folder.rmdir()  # the disk went away under the pull
    folder.write_text("not a folder")

    async def run() -> None:
        writer = ArchiveWriter(pages)
        await writer.keep("users", page(1))
        await writer.drain()

    with pytest.raises(PullError) as caught:
        asyncio.run(run())
    assert caught.value.code == "archive_failed"


def test_around_keeps_the_pages_of_a_failed_pull_and_raises_its_error(tmp_path: Path) -> None:
    pages = PageArchive(tmp_path / "pages")

    async def failing(writer: ArchiveWriter) -> None:
        await writer.keep("users", page(1))
        await writer.keep("users", page(2))
        raise PullError("users: page 3 kept failing", "http_error")

    async def run() -> None:
        writer = ArchiveWriter(pages)
        await writer.around(failing(writer))

    with pytest.raises(PullError, match="page 3"):
        asyncio.run(run())
    assert [n for _, n in read_archive(tmp_path / "pages")] == [1, 2]
