"""``free_port`` picks ports a server can still bind after the suite's own connections
came and went: below the kernel's ephemeral range, where outgoing connections never land."""

from __future__ import annotations

import socket

from edgecache.launcher import natsserver


def test_free_ports_lie_below_the_ephemeral_range_and_can_be_bound() -> None:
    low = natsserver._ephemeral_low()
    ports = {natsserver.free_port() for _ in range(50)}
    assert all(natsserver._LOWEST_PICK <= p < low for p in ports), sorted(ports)
    assert len(ports) > 40  # random picks: two pickers at once rarely meet
    for port in list(ports)[:5]:
        with socket.create_server(("127.0.0.1", port)):
            pass

