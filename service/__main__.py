"""Run the gateway: ``python -m service [--start-torchserve] [--host 127.0.0.1] [--port 8000]``.

With ``--start-torchserve`` it also starts TorchServe on the archives (what ``make serve`` does)
and stops it on Ctrl-C; without Java it says so and serves with the ``inprocess`` backend.
Everything else comes from ``GATEWAY_*`` environment variables (see ``service/settings.py``).
"""

from __future__ import annotations

import argparse
import logging

import uvicorn

from .app import create_app
from .settings import GatewaySettings

log = logging.getLogger("service")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--start-torchserve", action="store_true", help="start TorchServe on the archives too"
    )
    args = parser.parse_args(argv)
    settings = GatewaySettings()
    torchserve = None
    if args.start_torchserve and settings.backend == "torchserve":
        from model_store.torchserve import TorchServe, TorchServeError, check_java

        try:
            check_java()
        except TorchServeError as exc:
            log.warning(
                "%s\n-> falling back to the inprocess backend (same model code, in this process)",
                exc,
            )
            settings = settings.model_copy(update={"backend": "inprocess"})
        else:
            torchserve = TorchServe(settings.models, archive_dir=settings.archive_dir)
            settings = settings.model_copy(update={"torchserve_key_file": torchserve.key_file})
            torchserve.start()
            torchserve.wait_ready(progress=log.info)
    try:
        print(
            f"gateway on http://{args.host}:{args.port} ({settings.backend} backend); "
            "Ctrl-C stops it",
            flush=True,
        )
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    finally:
        if torchserve is not None:
            torchserve.stop()


if __name__ == "__main__":
    main()
