"""Reading the change-event log as JSON lines, once or following new commits.

Following does not poll on a timer: it sleeps on the database's WAL file
(watchfiles) and reads again when another process commits; PRAGMA
data_version tells whether anything was committed at all.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from watchfiles import watch

from ingestd.events.store import EventStore


def event_json(row: tuple) -> str:
    """One stored event as the JSON of DESIGN.md (id, type, created, tenant, set_id, data)."""
    event_id, type_, created, tenant, set_id, data = row
    set_part = f'"{set_id}"' if set_id else "null"
    return (
        f'{{"id":{event_id},"type":"{type_}","created":"{created}",'
        f'"tenant":"{tenant}","set_id":{set_part},"data":{data}}}'
    )


def events(
    store: EventStore,
    *,
    after: int = 0,
    tenant: str | None = None,
    type_glob: str | None = None,
    limit: int | None = None,
    follow: bool = False,
    stop: threading.Event | None = None,
) -> Iterator[str]:
    """JSON lines of the events after `after`; with `follow`, keep waiting for new ones."""
    sent = 0
    while True:
        page = 10_000 if limit is None else min(10_000, limit - sent)
        rows = store.read_events(after=after, tenant=tenant, type_glob=type_glob, limit=page)
        for row in rows:
            yield event_json(row)
            after = row[0]
        sent += len(rows)
        if limit is not None and sent >= limit:
            return
        if len(rows) == page:
            continue
        if not follow:
            return
        _wait_for_commit(store, stop)
        if stop is not None and stop.is_set():
            return


def _wait_for_commit(store: EventStore, stop: threading.Event | None) -> None:
    """Block until another connection commits (or `stop` is set)."""
    version = store.data_version()
    folder = store.path.parent
    names = {store.path.name, store.path.name + "-wal"}
    for _ in watch(
        folder,
        watch_filter=lambda _change, path: path.rsplit("/", 1)[-1] in names,
        debounce=50,
        step=20,
        rust_timeout=1000,
        yield_on_timeout=True,
        stop_event=stop,
    ):
        if store.data_version() != version or (stop is not None and stop.is_set()):
            return
