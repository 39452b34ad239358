"""TLS between nodes and from clients: https for ``raftnode``, verification of peers.

``raftnode`` serves https when ``TLS_CERT`` and ``TLS_KEY`` are set. ``TLS_CA`` is the
bundle that peer (and client) certificates are verified against; with
``TLS_CLIENT_AUTH`` the node also requires a certificate signed by it from every
connection (mutual TLS), and presents its own when it connects to peers.
"""

from __future__ import annotations

import ssl
from typing import Any

from cheroot.ssl.builtin import BuiltinSSLAdapter

__all__ = [
    "DeferredHandshakeAdapter",
    "client_context",
    "requests_options",
    "server_adapter",
    "server_context",
]


def server_context(cert: str, key: str, ca: str = "", client_auth: bool = False) -> ssl.SSLContext:
    """A server context for ``cert``/``key``; with ``client_auth``, clients must present a
    certificate that ``ca`` signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if ca:
        context.load_verify_locations(ca)
    if client_auth:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class DeferredHandshakeAdapter(BuiltinSSLAdapter):
    """cheroot's TLS adapter, with the handshake moved off the accepting thread.

    cheroot shakes hands where it accepts connections: one client that connects and
    sends nothing would stop the server from accepting anyone else for a whole timeout.
    Here the handshake happens on the first read, in the request thread, under the
    connection's timeout.
    """

    def __init__(self, context: ssl.SSLContext, cert: str, key: str) -> None:
        super().__init__(cert, key)
        self.context = context

    def wrap(self, sock: Any) -> tuple[Any, dict[str, str]]:
        """Wrap the accepted socket without shaking hands yet."""
        wrapped = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return wrapped, {"wsgi.url_scheme": "https", "HTTPS": "on"}


def server_adapter(
    cert: str, key: str, ca: str = "", client_auth: bool = False
) -> DeferredHandshakeAdapter:
    """The cheroot adapter that serves https with these files."""
    return DeferredHandshakeAdapter(server_context(cert, key, ca, client_auth), cert, key)


def requests_options(cert: str = "", key: str = "", ca: str = "") -> dict[str, Any]:
    """``requests`` keyword arguments to reach nodes: verify them against ``ca`` (the
    system's bundle when empty), and present ``cert``/``key`` when given (mutual TLS)."""
    options: dict[str, Any] = {"verify": ca or True}
    if cert and key:
        options["cert"] = (cert, key)
    return options


def client_context(cert: str = "", key: str = "", ca: str = "") -> ssl.SSLContext:
    """The context a node connects to peers with: it verifies them against ``ca`` (the
    system's bundle when empty), and presents ``cert``/``key`` when given (mutual TLS)."""
    context = ssl.create_default_context(cafile=ca or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert and key:
        context.load_cert_chain(cert, key)
    return context
