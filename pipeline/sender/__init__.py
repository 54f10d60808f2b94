"""The non-blocking ordered sender: hand items over now, have them delivered in order.

``await asyncio.create_task(send(item))`` in a loop is serial: N items cost N round trips. Firing
tasks without awaiting them is concurrent but loses order and loses errors. An
:class:`OrderedSender` sits between the two: items are grouped in *lanes* (a Kafka partition, a
key); lanes run concurrently up to a global limit, and within a lane an item is sent only once the
one before it has finished for good (accepted, or finally failed). A retryable failure keeps its
item at the head of its lane, so retries never reorder anything and block only that lane.

``submit`` returns a :class:`Receipt` without waiting on the network; the receipt resolves to a
:class:`Delivery` or raises the final error. Buffers are bounded per lane, in items and bytes.
With ``batch=`` a lane sends up to that many consecutive items in one call, and a batch that fails
for good is split in halves until the failing item is alone, so the items before it still count;
unless its error says the batch was ``delivered`` (its result could not be written): halves sent
again would be delivered twice, so it fails whole, at its first item.

The parts, as httpx splits a client from its transport: :mod:`~pipeline.sender.ordered` (the
sender and its lane workers), :mod:`~pipeline.sender.lane` (one lane's queue, bytes and phase),
:mod:`~pipeline.sender.threads` (blocking calls), :mod:`~pipeline.sender.drain` (drains and
cancellations), :mod:`~pipeline.sender.receipt` and :mod:`~pipeline.sender.protocols`.
"""

from pipeline.sender.lane import current_attempt
from pipeline.sender.ordered import OrderedSender
from pipeline.sender.protocols import BatchLimits, Gate, Lane, RetryObserver, RetryPolicy
from pipeline.sender.receipt import Delivery, Receipt
from pipeline.sender.threads import call_blocking, is_async_callable

__all__ = [
    "BatchLimits",
    "Delivery",
    "Gate",
    "Lane",
    "OrderedSender",
    "Receipt",
    "RetryObserver",
    "RetryPolicy",
    "call_blocking",
    "current_attempt",
    "is_async_callable",
]
