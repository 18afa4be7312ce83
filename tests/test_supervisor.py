"""The daemon's supervisor: a failing sibling task is restarted with backoff, and one that
keeps failing stops the daemon."""

from __future__ import annotations

import asyncio

from ingestd.daemon import MAX_FAILURES, Supervisor


def test_a_failing_task_is_restarted_and_becomes_healthy_again():
    async def main() -> tuple[int, bool, list[str]]:
        starts = 0
        running = asyncio.Event()

        async def flaky() -> None:
            nonlocal starts
            starts += 1
            if starts < 3:
                raise OSError("the disk hiccuped")
            running.set()
            await asyncio.Event().wait()

        gave_up: list[str] = []
        supervisor = Supervisor(gave_up.append, backoff=(0.01,))
        supervisor.start("flaky", flaky)
        await asyncio.wait_for(running.wait(), 5)
        healthy = supervisor.healthy()
        await supervisor.close()
        return starts, healthy, gave_up

    starts, healthy, gave_up = asyncio.run(main())
    assert starts == 3 and healthy and gave_up == []


def test_a_task_that_keeps_failing_gives_up_and_is_unhealthy():
    async def main() -> tuple[int, bool, list[str]]:
        starts = 0

        async def broken() -> None:
            nonlocal starts
            starts += 1
            raise RuntimeError("always")

        async def steady() -> None:
            await asyncio.Event().wait()

        gave_up: list[str] = []
        supervisor = Supervisor(gave_up.append, backoff=(0.01,))
        supervisor.start("steady", steady)
        supervisor.start("broken", broken)
        for _ in range(500):
            if gave_up:
                break
            await asyncio.sleep(0.01)
        healthy = supervisor.healthy()
        await supervisor.close()
        return starts, healthy, gave_up

    starts, healthy, gave_up = asyncio.run(main())
    assert gave_up == ["broken"] and starts == MAX_FAILURES and not healthy
