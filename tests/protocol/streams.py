"""What the tests of streams share: a stream opened by hand, closed by the node or not."""

from __future__ import annotations

import socket

from django_raft.protocol.connection import NodeConnection


class OpenedByHand:
    """A stream a test opened by hand: its socket, and the connection it came from."""

    sock: socket.socket | None
    connection: NodeConnection

    def received(self, data: bytes) -> None:
        """What the node wrote while ``closed_by_node`` waited (dropped here)."""

    def closed_by_node(self, timeout: float = 10) -> bool:
        """Whether the node closed the stream within ``timeout``."""
        assert self.sock is not None
        self.sock.settimeout(timeout)
        try:
            while data := self.sock.recv(1 << 16):
                self.received(data)
            return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.connection.close()
