"""Run ``secstream`` with aiokafka's fetcher waiting after an empty fetch, as a real Kafka broker makes it wait.

Benchmarks only, never production. The embedded broker (noida-db) answers an empty Fetch at once, where Kafka holds
it for up to ``fetch.max.wait.ms``; Faust's consumer thread then loops on empty fetches and takes the GIL from the
worker's own thread. Pausing 100 ms after a fetch that brought no records gives the worker the behaviour it would have
against Kafka. ``bench/streams_bench.py`` runs the Faust worker both ways and reports both.

Usage: ``python bench/faust_longpoll.py <secstream arguments>``
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.consumer.fetcher import Fetcher

EMPTY_FETCH_WAIT_SECONDS = 0.1
_fetch = Fetcher._proc_fetch_request


async def _fetch_like_kafka(self: Any, assignment: Any, node_id: Any, request: Any) -> Any:
    records_added = await _fetch(self, assignment, node_id, request)
    if not records_added:
        await asyncio.sleep(EMPTY_FETCH_WAIT_SECONDS)
    return records_added


Fetcher._proc_fetch_request = _fetch_like_kafka

if __name__ == "__main__":
    from secstream.cli import main

    main()
