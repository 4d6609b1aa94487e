"""Free ports in a range of this process's own (the suite's parallel workers each have one)."""

from __future__ import annotations

import socket

import pytest

from model_store.torchserve.host import PORT_RANGE_ENV, free_ports


def test_free_ports_come_from_the_range_and_skip_ports_in_use(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        low = taken.getsockname()[1]
        monkeypatch.setenv(PORT_RANGE_ENV, f"{low}-{low + 49}")
        ports = free_ports(3)
        assert len(set(ports)) == 3 and low not in ports
        assert all(low < port <= low + 49 for port in ports)
        with pytest.raises(OSError, match="fewer than 50 free ports"):
            free_ports(50)  # one of the fifty is taken
