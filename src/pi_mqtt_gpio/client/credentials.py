"""User name, password and TLS on a paho client: one place for the connection and the nodes
probe."""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt

__all__ = ["apply_credentials"]


def apply_credentials(client: mqtt.Client, username: str | None, password: str | None,
                      tls: bool | str | ssl.SSLContext) -> None:
    """``tls``: False, True (system CAs), a CA file path, or an ``SSLContext``."""
    if username is not None:
        client.username_pw_set(username, password)
    if isinstance(tls, ssl.SSLContext):
        client.tls_set_context(tls)
    elif isinstance(tls, str):
        client.tls_set(ca_certs=tls)
    elif tls:
        client.tls_set()
