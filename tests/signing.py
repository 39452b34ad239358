"""Sign test requests the way nodes and clients do (``django_raft.protocol.auth``)."""

from __future__ import annotations

from urllib.parse import urlsplit

from django_raft.protocol.auth import ANY_NODE, CLIENT, NODE, Signer, derive_keys


def signed(
    url: str,
    body: bytes,
    secret: str,
    sender: str = "client",
    kind: str = CLIENT,
    receiver: str = ANY_NODE,
) -> dict[str, str]:
    """The headers of a request to ``url`` carrying ``body``, signed with ``kind``'s key."""
    keys = derive_keys(secret)
    key = keys.node if kind == NODE else keys.client
    return Signer(key, kind, sender).headers("POST", urlsplit(url).path, receiver, body)
