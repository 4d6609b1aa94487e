"""A Kubernetes Service as kube-proxy makes one (iptables mode, the default): each new TCP
connection goes to one backend chosen at random, and stays there. What the gateway saw before it
found every worker itself: a few kept-alive connections, a few workers busy.

``python -m bench.service_proxy LISTEN=PORT,PORT ...``: one listening port per group, each
forwarding to its ports on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import Mapping, Sequence

from contract.lists import comma_separated

CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(groups: Mapping[int, Sequence[int]], seed: int = 0) -> None:
    """Listen on each key of ``groups``; each connection to one is spliced to a random port of
    its group."""
    rng = random.Random(seed)

    def handler(targets: Sequence[int]):
        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    "127.0.0.1", rng.choice(targets)
                )
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

        return connected

    servers = [
        await asyncio.start_server(handler(targets), "127.0.0.1", port)
        for port, targets in groups.items()
    ]
    await asyncio.gather(*(server.serve_forever() for server in servers))


def start_service_proxy(groups: Mapping[int, Sequence[int]]) -> subprocess.Popen[bytes]:
    """This module in a process of its own, once every listening port accepts connections."""
    from perf.stack import started_answering  # not in the proxy's process: it imports torch

    args = [f"{port}={','.join(map(str, targets))}" for port, targets in groups.items()]
    return started_answering(
        [sys.executable, "-m", "bench.service_proxy", *args],
        [f"http://127.0.0.1:{port}/" for port in groups],
        "the Service proxy",
    )


def main(argv: list[str]) -> None:
    groups = {}
    for arg in argv:
        port, targets = arg.split("=")
        groups[int(port)] = comma_separated(targets, int)
    asyncio.run(serve(groups))


if __name__ == "__main__":
    main(sys.argv[1:])
