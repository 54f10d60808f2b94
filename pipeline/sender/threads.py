"""Blocking calls of the lanes, in daemon threads: a blocking ``send``, and ``call_blocking``."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

from pipeline.sender.lane import CURRENT, LaneState

R = TypeVar("R")


async def call_blocking(function: Callable[..., R], *args: object) -> R:
    """Run a blocking ``function(*args)`` without blocking the loop, as the current lane's call.

    An async send function that must call blocking code (a client library nobody can change)
    uses this: in a lane it runs in the sender's thread pool and the lane stays busy until the
    call returns, even if the lane is cancelled meanwhile, so two calls of one lane never
    overlap; outside a lane it is ``asyncio.to_thread``.
    """
    current = CURRENT.get()
    if current is None:
        return await asyncio.to_thread(function, *args)
    threads, state = current
    return await threads.run(state, function, *args)


def is_async_callable(function: Callable[..., object]) -> bool:
    """Whether ``function`` is awaited, or is blocking code to run in a thread.

    An object whose ``__call__`` is ``async def`` counts as async too.
    """
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - an object with `async def __call__`
    )


class ThreadCalls:
    """The blocking calls of one sender's lanes, and what becomes of them when lanes end.

    A call in a thread cannot be stopped. Its lane stays busy until it returns, even once the
    lane is cancelled, so two calls of one lane never overlap; a close waits for running calls
    until its deadline and abandons the rest to daemon threads, which never hold the
    interpreter's exit. A call that returns after the sender's loop closed is ignored.
    """

    def __init__(self, max_workers: int) -> None:
        self._max_workers = max_workers
        self._pool: DaemonThreads | None = None  # started by the first call

    async def run(self, state: LaneState[Any], function: Callable[..., R], *args: object) -> R:
        """Run ``function(*args)`` in a thread as ``state``'s lane's call."""
        if self._pool is None:
            self._pool = DaemonThreads(self._max_workers, "ordered-sender")
        call = self._pool.submit(function, *args)
        state.thread_call = call  # type: ignore[assignment]
        return await asyncio.wrap_future(call)

    async def send(
        self, send: Callable[[Any], object], state: LaneState[Any], item: object
    ) -> object:
        """One attempt of a blocking ``send``; one that returns a coroutine has it awaited."""
        result = await self.run(state, send, item)
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            return await result
        return result

    def when_returned(self, state: LaneState[Any], callback: Callable[[], None]) -> None:
        """Call ``callback`` in this loop once ``state``'s running call returns.

        An abandoned call may return long after the sender closed and its loop ended: then
        nobody is left to tell, and the return is ignored.
        """
        assert state.thread_call is not None  # noqa: S101 - only for a lane busy in a thread
        loop = asyncio.get_running_loop()

        def returned(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(callback)

        state.thread_call.add_done_callback(returned)

    async def wait(self, states: Iterable[LaneState[Any]], timeout: float | None) -> int:
        """Wait up to ``timeout`` for the lanes' running calls; how many are still running."""
        running = [s.thread_call for s in states if s.busy_in_thread]
        if not running:
            return 0
        waiting = [asyncio.wrap_future(call) for call in running if call is not None]
        _, pending = await asyncio.wait(waiting, timeout=timeout)
        return len(pending)

    def shutdown(self) -> None:
        """Cancel calls not yet started; running ones run on, unwaited for."""
        if self._pool is not None:
            self._pool.shutdown()


class DaemonThreads:
    """A bounded pool of daemon threads for blocking calls.

    ``concurrent.futures.ThreadPoolExecutor`` joins its workers when the interpreter exits, so one
    abandoned call that never returns would hold the process long past any shutdown deadline.
    These threads are daemons: once the caller has given up on a call, nothing waits for it.
    Threads start as calls need them, up to ``max_workers``, and are reused.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max_workers = max_workers
        self._name = name
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[object, ...]]]
        self._work = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, function: Callable[..., R], *args: object) -> Future[R]:
        """Run ``function(*args)`` in a thread; the future gets what it returns or raises."""
        future: Future[R] = Future()
        with self._lock:
            if self._closed:
                msg = "the thread pool is shut down"
                raise RuntimeError(msg)
            self._work.put((future, function, args))
            if not self._idle.acquire(blocking=False) and self._threads < self._max_workers:
                self._threads += 1
                name = f"{self._name}_{self._threads}"
                threading.Thread(target=self._serve, name=name, daemon=True).start()
        return future

    def shutdown(self) -> None:
        """Cancel calls not yet started and let idle threads end; running calls run on."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    future, _, _ = self._work.get_nowait()
                except queue.Empty:
                    break
                future.cancel()
            for _ in range(self._threads):
                self._work.put((Future(), _stop, ()))

    def _serve(self) -> None:
        while True:
            future, function, args = self._work.get()
            if function is _stop:
                return
            if future.set_running_or_notify_cancel():
                try:
                    result = function(*args)
                except BaseException as error:  # the caller gets it, as from any pool
                    future.set_exception(error)
                else:
                    future.set_result(result)
            del future, function, args  # a finished call's objects must not outlive it here
            self._idle.release()


def _stop() -> None:
    """The marker that ends a :class:`DaemonThreads` worker."""
