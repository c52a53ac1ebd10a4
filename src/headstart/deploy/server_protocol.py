"""uvicorn's HTTP/1.1 protocol with a deadline on each request's headers.

uvicorn times out a connection that is idle between requests, but not one that opens and then
sends its headers a byte at a time: 200 such clients stayed open indefinitely. This protocol
closes a connection whose next request's headers have not all arrived `read_seconds` after it
opened or after its last answer. (The body's deadline is the application's: server_uploads.read_body.)
"""

from __future__ import annotations

import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("headstart.deploy.server")


def deadline_protocol(read_seconds: float) -> type[H11Protocol]:
    """An H11Protocol class for uvicorn.Config(http=...) that drops clients slower than `read_seconds`."""

    class DeadlineProtocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.arm_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.arm_deadline()

        def arm_deadline(self) -> None:
            # h11 starts a new cycle when a request's headers are complete; if the cycle is the same
            # when the timer fires, no request arrived in time.
            self.loop.call_later(read_seconds, self.drop_if_still_waiting, self.cycle)

        def drop_if_still_waiting(self, cycle) -> None:
            # A pipelined request that began inside on_response_complete has this same cycle while it is
            # served: only a connection with no request in progress is dropped.
            idle = cycle is None or cycle.response_complete
            if self.cycle is cycle and idle and not self.transport.is_closing():
                log.info("closed a connection that sent no complete request within %g s", read_seconds)
                self.transport.close()

    return DeadlineProtocol
