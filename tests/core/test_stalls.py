"""After a stall of the event loop, deadlines are checked only once the loop has read what
arrived meanwhile: an answer waiting in a socket is not blamed on the target.

Run on both event loops: uvloop runs due timers before it polls for I/O, asyncio after.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

import pytest

from tcp_multiplexer.core.dispatch import Dispatcher
from tcp_multiplexer.core.interfaces import PoolEvents, Request
from tcp_multiplexer.observability.metrics import TargetMetrics
from tcp_multiplexer.protocols.echo import codec as echo_codec
from tests.core.fakes import LOG, FakeOwner, FakePool

QUEUE_TIMEOUT = 0.05
STALL = 0.2


def loops() -> list[Callable[[], asyncio.AbstractEventLoop]]:
    makers: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is installed wherever it exists
        return makers
    return [*makers, uvloop.new_event_loop]


async def queued_request_meets_a_stall() -> tuple[FakeOwner, FakePool]:
    loop = asyncio.get_running_loop()
    pools: list[FakePool] = []

    def make_pool(events: PoolEvents) -> FakePool:
        pools.append(FakePool(events))
        return pools[-1]

    dispatcher = Dispatcher(
        echo_codec(),
        TargetMetrics(),
        make_pool,
        clock=loop,
        log=LOG,
        timeout=QUEUE_TIMEOUT,
        queue_size=32,
    )
    (pool,) = pools
    busy, waiting = FakeOwner("busy"), FakeOwner("waiting")
    dispatcher.submit(Request(busy, b"first\n", loop.time()))
    dispatcher.submit(Request(waiting, b"second\n", loop.time()))
    # The target's answer to the first request arrives while the loop is stalled.
    answer, target = socket.socketpair()
    done = asyncio.Event()

    def answered() -> None:
        answer.recv(100)
        loop.remove_reader(answer)
        first = pool.connection.sent[0]
        pool.free()
        dispatcher.finish(first, b"first\n", loop.time(), False)
        done.set()

    # The stall happens in an I/O callback (as when thousands of clients are accepted
    # in one round), and the answer arrives in the middle of it, from another thread.
    stall, trigger = socket.socketpair()

    def stalled() -> None:
        stall.recv(100)
        loop.remove_reader(stall)
        time.sleep(STALL)

    loop.add_reader(answer, answered)
    loop.add_reader(stall, stalled)
    sender = threading.Timer(STALL / 4, target.send, (b"x",))
    try:
        sender.start()
        trigger.send(b"x")
        async with asyncio.timeout(5.0):
            await done.wait()
        await asyncio.sleep(QUEUE_TIMEOUT * 2)
    finally:
        sender.join()
        for sock in (answer, target, stall, trigger):
            sock.close()
    return waiting, pool


@pytest.mark.parametrize("make_loop", loops(), ids=lambda make: make.__module__)
def test_a_stall_does_not_expire_a_request_whose_connection_is_free_in_a_socket(
    make_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    loop = make_loop()
    try:
        waiting, pool = loop.run_until_complete(queued_request_meets_a_stall())
    finally:
        loop.close()
    assert [request.payload for request in pool.connection.sent] == [b"first\n", b"second\n"]
    assert not waiting.answers, "sent to the target, not answered busy"
