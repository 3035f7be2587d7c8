"""systemd's notification protocol: READY, WATCHDOG and STOPPING messages.

The protocol is one datagram to the socket named by NOTIFY_SOCKET; outside systemd the
variable is unset and `notify` does nothing. (python-systemd would need libsystemd's headers
to build, for these few lines.)
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send `message` to systemd; returns whether there was a socket to send it to."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        logger.warning("systemd notification failed message=%s error=%s", message, exc)
        return False
    return True
