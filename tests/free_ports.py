"""Ports for services a test starts itself, chosen below Linux's ephemeral range.

A port the kernel hands out (bind to 0) is an ephemeral port, which any outgoing connection on
the machine can take again before the service binds it; that made tests fail now and then
("address already in use"). Services that bind a block (MLLP for Cerner and port + 1 for RiO; a
three-broker cluster) get the whole block checked.
"""
from __future__ import annotations

import random
import socket

LOW, HIGH = 30_000, 31_900      # below the ephemeral range (32768-) and the fixed test ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports(n: int, width: int = 1) -> list[int]:
    """n first ports of blocks of `width` free consecutive ports, no two blocks overlapping."""
    out: list[int] = []
    port = random.randrange(LOW, HIGH - 100 * width)
    while len(out) < n:
        if port + width > HIGH:
            port = LOW
        if all(_free(port + i) for i in range(width)):
            out.append(port)
            port += width
        else:
            port += 1
    return out


def free_port() -> int:
    return free_ports(1)[0]
