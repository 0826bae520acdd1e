"""Sink throughput: SecurityEventBatch messages in Kafka -> Logs Ingestion requests -> the far end.

Produces ``--rows`` real SecurityEvent rows (the golden rows written by Microsoft's agents, each made unique) in
batches of ``--batch`` to the embedded broker, then runs one sink worker (``SinkStage``, ``--in-flight`` uploads at
a time, the real ``LogsIngestionClient``) three ways:

* **blackhole**: a minimal HTTP server (its own process) that reads each body and answers 204, so the far end costs
  next to nothing: the sink's own ceiling per worker;
* **emulator**: the workspace emulator (HTTPS, token auth, shaping, SQLite): the whole local path;
* **emulator ceiling**: the same gzip bodies posted straight to the emulator through the SDK from ``--in-flight``
  threads, no Kafka and no sink: what the emulator itself can take on this machine.

Each sink run is timed from start to the last accepted row; the sink's CPU is this process's CPU time (the broker,
emulator and blackhole are separate processes). Run: ``.venv/bin/python bench/sinks_bench.py [--rows 100000]``
-> bench/results/sinks.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import timeit
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from secstream.broker import EmbeddedBroker  # noqa: E402
from secstream.config import Settings  # noqa: E402
from secstream.kafka import producer_config  # noqa: E402
from secstream.lifecycle import run_stage  # noqa: E402
from secstream.topics import ensure_topics  # noqa: E402
from sinks.request_builder import RequestBuilder, encode, gzip_body  # noqa: E402
from sinks.row_json import RowDecoder, serialise_rows  # noqa: E402
from sinks.runner import SinkStage  # noqa: E402
from sinks.service import IngestionService  # noqa: E402
from tests.sinks.rows import encoded, make_batches  # noqa: E402
from workspace.testing import WorkspaceEmulator  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "sinks.json"
TARGET = 50_000  # rows/s per sink worker

BLACKHOLE = r"""
import sys
from aiohttp import web

async def accept(request):
    await request.read()
    return web.Response(status=204)

app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/{tail:.*}", accept)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of another process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_sink(settings: Settings, rows: int, name: str, far_pid: int | None, broker_pid: int | None) -> dict[str, Any]:
    """One sink worker from start to the last accepted row; ``steady`` figures start at the first message taken
    (after the consumer group join, which the embedded broker makes take ~1 s)."""
    stage = SinkStage(settings, settings.destinations[0])
    stop = threading.Event()
    cpu0, far0, t0 = time.process_time(), process_cpu(far_pid) if far_pid else 0.0, time.perf_counter()
    broker0 = process_cpu(broker_pid) if broker_pid else 0.0
    thread = threading.Thread(target=run_stage, args=(stage, stop, settings.sink.checkpoint_seconds))
    thread.start()
    while stage.totals["messages"] == 0 and thread.is_alive():
        time.sleep(0.001)
    t_first = time.perf_counter()
    while stage.totals["rows_accepted"] < rows and thread.is_alive():
        time.sleep(0.01)
    end = time.perf_counter()
    wall, cpu = end - t0, time.process_time() - cpu0
    far_cpu = process_cpu(far_pid) - far0 if far_pid else None
    broker_cpu = process_cpu(broker_pid) - broker0 if broker_pid else None
    stop.set()
    thread.join()
    if stage.totals["rows_accepted"] != rows:
        raise RuntimeError(f"{name}: {stage.totals['rows_accepted']} of {rows} rows accepted")
    result = {"rows": rows, "wall_s": round(wall, 3), "rows_per_s": round(rows / wall),
              "steady_wall_s": round(end - t_first, 3), "steady_rows_per_s": round(rows / (end - t_first)),
              "sink_cpu_s": round(cpu, 2), "sink_cpu_us_per_row": round(cpu / rows * 1e6, 1),
              "rows_per_sink_cpu_s": round(rows / cpu), "requests": stage.totals["requests"]}
    if far_cpu is not None:
        result["far_end_cpu_s"] = round(far_cpu, 2)
    if broker_cpu is not None:
        result["broker_cpu_s"] = round(broker_cpu, 2)
    print(f"{name:>10}: {result}", flush=True)
    return result


def emulator_ceiling(ws: WorkspaceEmulator, settings: Settings, batches: list[dict[str, Any]],
                     in_flight: int) -> dict[str, Any]:
    """The sink's own request bodies posted straight to the emulator from ``in_flight`` SDK threads."""
    builder = RequestBuilder(settings.sink.max_request_bytes)
    requests = []
    for offset, batch in enumerate(batches):
        requests += builder.add(0, offset, batch["computer"], batch["rows"]).requests
    requests += builder.drain()
    bodies = [(r.row_count, body) for request in requests for r, body in encode(request)]
    service = IngestionService(settings.destinations[0], settings.sink)
    dcr = settings.destinations[0].dcr_immutable_ids[0]
    far0, t0, cpu0 = process_cpu(ws.process.pid), time.perf_counter(), time.process_time()  # type: ignore[union-attr]
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(lambda b: service.send(dcr, b[1], f"bench-{id(b)}"), bodies))
    wall, client_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    far_cpu = process_cpu(ws.process.pid) - far0  # type: ignore[union-attr]
    service.close()
    rows = sum(n for n, _ in bodies)
    result = {"rows": rows, "wall_s": round(wall, 3), "rows_per_s": round(rows / wall),
              "far_end_cpu_s": round(far_cpu, 2), "rows_per_far_end_cpu_s": round(rows / far_cpu),
              "far_end_cpu_us_per_row": round(far_cpu / rows * 1e6, 1), "requests": len(bodies),
              "sdk_cpu_ms_per_request": round(client_cpu / len(bodies) * 1e3, 2)}
    print(f"{'ceiling':>10}: {result}", flush=True)
    return result


def zlib_gzip(data: bytes, level: int) -> bytes:
    """Gzip with the standard library's zlib, for comparison with ISA-L."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def cpu_breakdown(values: list[bytes]) -> dict[str, Any]:
    """CPU µs per row of the sink's own steps, no I/O: message value -> row JSON (native, and the reference path:
    decode to dicts, then orjson), packing, gzip (ISA-L and zlib levels)."""
    from schemas.codec import decode_security_batch

    native_decoder, reference_decoder = RowDecoder(native_json=None), RowDecoder(native_json=False)
    t = time.process_time()
    batches = [native_decoder.decode(v) for v in values]
    rows = sum(len(b.rows) for b in batches)
    out: dict[str, float] = {"value_to_row_json_us": time.process_time() - t}
    t = time.process_time()
    decoded = [decode_security_batch(v) for v in values]
    out["reference_decode_us"] = time.process_time() - t
    t = time.process_time()
    reference = [serialise_rows(b) for b in decoded]
    out["reference_serialise_us"] = time.process_time() - t
    assert [b.rows for b in reference] == [b.rows for b in batches] == [reference_decoder.decode(v).rows
                                                                         for v in values]
    builder = RequestBuilder()
    t = time.process_time()
    requests = [r for i, b in enumerate(batches) for r in builder.add_json(0, i, b.computer, b.rows).requests]
    requests += builder.drain()
    out["pack_us"] = time.process_time() - t
    sizes: dict[str, int] = {}
    bodies = [r.json_body() for r in requests]
    for label, compress in (("isal1", lambda b: gzip_body(b, 1)), ("zlib1", lambda b: zlib_gzip(b, 1)),
                            ("isal3", lambda b: gzip_body(b, 3)), ("zlib6", lambda b: gzip_body(b, 6))):
        t = time.process_time()
        sizes[label] = sum(len(compress(b)) for b in bodies)
        out[f"gzip_{label}_us"] = time.process_time() - t
    result = {k: round(v / rows * 1e6, 2) for k, v in out.items()}
    result["row_json_native"] = native_decoder.native_in_use
    result["json_bytes_per_row"] = round(sum(r.raw_bytes for r in requests) / rows)
    result.update({f"gzip_{label}_bytes_per_row": round(size / rows) for label, size in sizes.items()})
    print(f"{'cpu':>10}: {result}", flush=True)
    return result


def per_row_path(stage: str, rows: int, batch: int, run: bool) -> None:
    """The per-row work alone, for ``valgrind --tool=callgrind`` (instruction counts do not depend on the load).

    ``sink``: on message values, decoding to row JSON (``sinks.row_json``), the status recorder, packing, gzip and
    offset tracking, no Kafka and no HTTP (``SECSTREAM_NATIVE_ROW_JSON=0``: by decoded dicts and orjson).
    ``emulator``: on the sink's gzip bodies, the emulator's decode + shaping + SQLite write, in-process.
    Everything is prepared first; ``run=False`` prepares only, so (count with run) - (count without) = the path.
    """
    from datetime import UTC, datetime

    from secstream.config import WorkspaceEmulatorSettings
    from secstream.status import StatusRecorder
    from sinks.checkpoint import OffsetTracker
    from workspace.server import Emulator, _Request

    batches = make_batches(rows, batch, computers=50)
    if stage == "sink":
        values = [v for _, v in encoded(batches)]
        decoder = RowDecoder()
        status, tracker, builder = StatusRecorder(Settings(), "bench"), OffsetTracker(), RequestBuilder()
        requests = []
        for offset, value in enumerate(values if run else []):
            message = decoder.decode(value)
            tracker.register(0, offset, len(message.rows))
            status.took(0, offset, message.computer, message.status_rows)
            requests += builder.add_json(0, offset, message.computer, message.rows).requests
        for request in requests + builder.drain():
            for part, _body in encode(request):
                tracker.accepted(part.segments)
                status.resolved(part.segments, accepted=True)
        return
    builder = RequestBuilder()
    requests = [r for offset, b in enumerate(batches)
                for r in builder.add(0, offset, b["computer"], b["rows"]).requests]
    bodies = [body for request in requests + builder.drain() for _, body in encode(request)]
    state_dir = Path(tempfile.mkdtemp(prefix="sinks-bench-path-"))
    emulator = Emulator(WorkspaceEmulatorSettings(state_dir=state_dir))
    dcr, stream = next(iter(emulator.shapers))
    for body in bodies if run else []:
        emulator.store.write(emulator._shape_body(_Request(dcr, stream, "bench", body, "gzip", datetime.now(UTC))))
    emulator.close()
    shutil.rmtree(state_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=200, help="rows per SecurityEventBatch message")
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--per-row-path", choices=["sink", "emulator"],
                        help="run only that per-row path over --rows rows (for callgrind), then exit")
    parser.add_argument("--prepare-only", action="store_true",
                        help="with --per-row-path: build the input, skip the run")
    args = parser.parse_args()
    if args.per_row_path:
        per_row_path(args.per_row_path, args.rows, args.batch, run=not args.prepare_only)
        return

    tmp = Path(tempfile.mkdtemp(prefix="sinks-bench-"))
    broker = EmbeddedBroker(data_dir=tmp / "broker", port=free_port())
    broker.start()
    port = free_port()
    blackhole = subprocess.Popen([sys.executable, "-c", BLACKHOLE, str(port)])
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    result: dict[str, Any] = {"machine": machine, "load_average_at_start": os.getloadavg(), "rows": args.rows,
                              "batch": args.batch, "in_flight": args.in_flight}
    # a machine-speed reference, as in the other benchmarks: µs per sum(range(100))
    result["reference_sum_range_100_us"] = round(timeit.timeit("sum(range(100))", number=200_000) * 5, 2)
    try:
        with WorkspaceEmulator(tmp / "workspace") as ws:
            base = Settings(kafka={"bootstrap_servers": broker.bootstrap},
                            topics={"normalized": "bench-normalized", "normalized_partitions": 6,
                                    "dead_letter": "bench-dlq", "delivery_log": "bench-delivery", "raw": "bench-raw"},
                            sink={"max_in_flight": args.in_flight, "checkpoint_seconds": 1.0})
            ensure_topics(base)
            batches = make_batches(args.rows, args.batch, computers=50)
            producer = Producer(producer_config(base.kafka))
            for key, value in encoded(batches):
                producer.produce(base.topics.normalized, key=key, value=value)
            producer.flush(60)
            result["cpu_breakdown"] = cpu_breakdown([v for _, v in encoded(batches[: max(1, 20_000 // args.batch)])])
            result["avro_bytes_per_row"] = round(sum(len(v) for _, v in encoded(batches[:20]))
                                                 / sum(len(b["rows"]) for b in batches[:20]))

            hole = {"name": "blackhole", "endpoint": f"http://127.0.0.1:{port}",
                    "dcr_immutable_ids": ["dcr-" + "0" * 32], "credential": {"mode": "emulator", "token": "x"}}
            assert ws.process is not None
            for name, destination, far_pid in (("blackhole", hole, blackhole.pid),
                                                ("emulator", ws.destination("emulator"), ws.process.pid)):
                settings = base.model_copy(update={"destinations": Settings(destinations=[destination]).destinations})
                result[name] = run_sink(settings, args.rows, name, far_pid, broker.pid())
            result["emulator_ceiling"] = emulator_ceiling(ws, base.model_copy(
                update={"destinations": [Settings(destinations=[ws.destination("ceiling")]).destinations[0]]}),
                batches, args.in_flight)
    finally:
        blackhole.terminate()
        blackhole.wait(10)
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the broker's snapshot of every row sent
    result["load_average_at_end"] = os.getloadavg()
    result["target_rows_per_s"] = TARGET
    result["blackhole_vs_target"] = round(result["blackhole"]["rows_per_s"] / TARGET, 2)
    ceiling = result["emulator_ceiling"]["rows_per_s"]
    result["emulator_vs_ceiling"] = round(result["emulator"]["rows_per_s"] / ceiling, 2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
    main()
