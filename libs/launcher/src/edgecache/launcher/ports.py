"""Probes of TCP and HTTP ports: is something listening, is the port free, does the
gateway answer."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable

__all__ = ["http_answers", "port_in_use", "wait_tcp"]


def wait_tcp(host: str, port: int, timeout_s: float, alive: Callable[[], bool]) -> bool:
    """Wait until ``host:port`` accepts a TCP connection; False on timeout or if ``alive()``
    turns false (the process that should listen died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (the gateway could not bind)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError:
        return True
    return False


def http_answers(host: str, port: int) -> bool:
    """Whether an HTTP server answers ``GET /`` on ``host:port`` (any status will do)."""
    conn = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
    return True
