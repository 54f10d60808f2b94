r"""A stand-in for a Space API client library you cannot change: blocking, one item at a time.

``send_to_space(item)`` takes about 20 ms, like a network call, and appends the item to the
JSON-lines file named by ``SPACE_CLIENT_OUTPUT`` (default ``space-items.jsonl``), so you can see
what arrived and in which order. It raises :class:`SpaceRejected` for an item the "API" refuses
(one with ``"reject": true``) and :class:`SpaceUnavailable` when it is "down" (while the file
named by ``SPACE_CLIENT_DOWN`` exists).

Run the stage with it, from this directory::

    PIPELINE_KAFKA_GROUP_ID=space-client-example \\
    PIPELINE_SINK_FUNCTION=space_client:send_to_space \\
    PIPELINE_SINK_ARGUMENT=json \\
    PIPELINE_SINK_REJECT_EXCEPTIONS=space_client.SpaceRejected \\
    space-pipeline run
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

_lock = threading.Lock()


class SpaceRejected(Exception):
    """The Space API refused this item for good."""


class SpaceUnavailable(Exception):
    """The Space API is down; try again later."""


def send_to_space(item: Any) -> None:  # noqa: ANN401 - any JSON value
    """Deliver one item, blocking until the "API" answered."""
    time.sleep(0.02)
    down = os.environ.get("SPACE_CLIENT_DOWN")
    if down and Path(down).exists():
        raise SpaceUnavailable("the Space API is down")
    if isinstance(item, dict) and item.get("reject"):
        raise SpaceRejected(f"refused: {item}")
    line = json.dumps(item, sort_keys=True)
    with _lock, Path(os.environ.get("SPACE_CLIENT_OUTPUT", "space-items.jsonl")).open("a") as out:
        out.write(line + "\n")
