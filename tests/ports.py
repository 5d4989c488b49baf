"""Loopback ports for the tests' servers that parallel test processes cannot both pick.

Binding to port 0 and closing the socket, then handing the number to a server, leaves a gap
in which another process can take the port. With pytest-xdist, the other test worker is
such a process, and it picks the same way. Worse, port 0 picks from the kernel's ephemeral
range (``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 on Linux), which every
outgoing connection's source port also comes from: a test that kills Redis and restarts it
on the same port can find a client's connection sitting on it.

So each test process picks from its own block of ports below the ephemeral range: the block
is chosen by the xdist worker's number (``PYTEST_XDIST_WORKER``, "gw0", "gw1", ...; a run
without xdist has a block of its own), so two workers of one run never share a port. Within
its block a process walks on from a start chosen by its pid, and skips a port it cannot bind
(a server of another program, a socket of an earlier run in TIME_WAIT, or another run of the
suite on the same machine). The servers the tests start also retry on a new port when theirs
was taken all the same (see `serving.running_server`, `redis_server.RedisServer`).
"""

from __future__ import annotations

import itertools
import os
import re
import socket

__all__ = ["free_port"]

#: The first port of the blocks, and each block's size: 21 blocks below 32768.
FIRST_PORT = 11_000
BLOCK_SIZE = 1_000
N_BLOCKS = 21


def _block_start() -> int:
    """The first port of this process's block: block 0 without xdist, 1 + n for "gw<n>"."""
    match = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    block = 0 if match is None else 1 + int(match.group(1)) % (N_BLOCKS - 1)
    return FIRST_PORT + block * BLOCK_SIZE


_START = _block_start()
# Offset by the pid: two runs of the suite at once start at different places of a block.
_NEXT = itertools.count(os.getpid() % BLOCK_SIZE)


def free_port() -> int:
    """A loopback port of this test process's block that nothing is bound to now."""
    for _ in range(BLOCK_SIZE):
        port = _START + next(_NEXT) % BLOCK_SIZE
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or in TIME_WAIT from an earlier run: the next one
            return port
    raise RuntimeError(
        f"No free loopback port in {_START}-{_START + BLOCK_SIZE - 1} (this test process's "
        "block): something else holds them all."
    )
