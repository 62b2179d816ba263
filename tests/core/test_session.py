"""A client session alone: answers in order, pausing and resuming, closing."""

from __future__ import annotations

import asyncio
from typing import cast

from tcp_multiplexer.core.interfaces import Request, RequestState
from tcp_multiplexer.core.session import ClientSession
from tcp_multiplexer.protocols.echo import codec as echo_codec
from tcp_multiplexer.protocols.http.codec import HttpCodec
from tcp_multiplexer.testing import MemoryTransport, VirtualClock
from tests.core.fakes import FakeHost, RecordingDispatch
from tests.framing.builders import http_request


def connected(host: FakeHost) -> tuple[ClientSession, MemoryTransport, RecordingDispatch]:
    session = ClientSession(host, 1)
    transport = MemoryTransport(session)
    session.connection_made(cast(asyncio.Transport, transport))
    assert isinstance(host.dispatch, RecordingDispatch)
    return session, transport, host.dispatch


def answer(request: Request, data: bytes) -> None:
    """What the dispatcher does when an answer is in."""
    request.state = RequestState.DONE
    request.answer = data
    request.owner.request_done(request)


async def test_answers_are_written_in_request_order_whatever_order_they_come_in() -> None:
    session, transport, dispatch = connected(FakeHost(echo_codec(), VirtualClock()))
    session.data_received(b"one\ntwo\nthree\n")
    one, two, three = dispatch.submitted
    answer(three, b"3\n")
    answer(two, b"2\n")
    assert transport.data == b"", "nothing before the first answer"
    answer(one, b"1\n")
    assert transport.take() == b"1\n2\n3\n"
    assert transport.writes == 1, "the answers that were ready leave in one write"


async def test_a_client_over_its_backlog_is_paused_until_answers_go_out() -> None:
    session, transport, dispatch = connected(FakeHost(echo_codec(), VirtualClock(), backlog=2))
    session.data_received(b"a\nb\n")
    assert not transport.reading
    answer(dispatch.submitted[0], b"a\n")
    assert transport.reading


async def test_a_client_that_does_not_read_is_paused_and_resumed() -> None:
    session, transport, _dispatch = connected(FakeHost(echo_codec(), VirtualClock()))
    session.pause_writing()
    session.pause_for_queue()
    assert not transport.reading
    session.resume_writing()
    assert not transport.reading, "paused as long as one reason is left"
    session.resume_for_queue()
    assert transport.reading


async def test_a_bad_request_closes_only_that_client_at_once() -> None:
    host = FakeHost(echo_codec(), VirtualClock())
    session, transport, dispatch = connected(host)
    session.data_received(b"x" * 70_000)
    assert transport.aborted
    assert dispatch.closed_owners == [session]
    assert host.connected == []


async def test_a_request_that_ends_the_connection_is_the_last_one_read() -> None:
    session, transport, dispatch = connected(FakeHost(HttpCodec(), VirtualClock()))
    closing = http_request(fields=(b"Connection: close",))
    session.data_received(closing + http_request())
    (request,) = dispatch.submitted
    assert request.closes_target
    session.data_received(http_request())
    assert len(dispatch.submitted) == 1
    answer(request, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert transport.closed, "closed once that request is answered"


async def test_a_refused_client_is_closed_before_anything_is_read() -> None:
    host = FakeHost(echo_codec(), VirtualClock())
    host.refuse = True
    session, transport, dispatch = connected(host)
    assert transport.aborted
    session.data_received(b"hello\n")
    assert not dispatch.submitted
