"""A blocking sink function for the bench: 20 ms per call, like a client library's network call.

``PIPELINE_SINK_FUNCTION=blocking_sink:send`` (with ``bench/`` on ``PYTHONPATH``). Each call
appends ``<arrival monotonic> <partition> <offset>`` to the file named by ``BENCH_SINK_LOG`` once
it returns, so the bench counts deliveries and checks their order from the function's side.
"""

import os
import threading
import time

from pipeline.records import Record

_lock = threading.Lock()
_log = open(os.environ.get("BENCH_SINK_LOG", os.devnull), "a", buffering=1)  # noqa: SIM115


def send(record: Record) -> None:
    arrived = time.monotonic()
    time.sleep(0.02)
    with _lock:
        _log.write(f"{arrived:.6f} {record.partition} {record.offset}\n")
