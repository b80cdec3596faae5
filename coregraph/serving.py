"""How ``coregraph serve`` runs uvicorn, and how it leaves on SIGTERM.

On SIGTERM (or SIGINT) uvicorn stops accepting connections, closes idle keep-alive
connections, lets the HTTP requests in flight finish and cancels those still running after
``COREGRAPH_SHUTDOWN_GRACE_SECONDS``; then the app's lifespan ends (the in-process relay and
webhook worker finish or release their work, ``coregraph.streams.worker``). WebSockets are
closed at once: nothing on them drains (a subscription runs until the client leaves), and
uvicorn's own close code, 1012 (service restart), says "come back here". ``GoingAwayWebSockets``
closes them with 1001 (going away), so clients reconnect, through the gateway or load
balancer, to another process; graphql-ws retries on both codes.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from coregraph.settings import Settings

# RFC 6455, 7.4.1: the endpoint is going away (a server going down).
GOING_AWAY = 1001
GOING_AWAY_REASON = "server shutting down"


class GoingAwayWebSockets(WebSocketsSansIOProtocol):
    """uvicorn's default WebSocket protocol (websockets, sans-I/O), closing with 1001 instead of
    1012 when the server shuts down."""

    def shutdown(self) -> None:
        if not self.handshake_complete or self.close_sent:
            super().shutdown()  # a handshake to refuse, or a close already under way
            return
        self.stop_keepalive()
        # The app hears the socket end as if the client had left, with the code sent.
        self.queue.put_nowait({"type": "websocket.disconnect", "code": GOING_AWAY})
        self.conn.send_close(GOING_AWAY, GOING_AWAY_REASON)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        # The close frame is written before the connection ends: the client reads 1001.
        self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The options ``coregraph serve`` gives uvicorn for shutting down gracefully."""
    return {
        "ws": f"{__name__}:{GoingAwayWebSockets.__name__}",
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
    }
