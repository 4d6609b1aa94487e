"""Run the gateway: ``python -m service [--start-torchserve] [--host 127.0.0.1] [--port 8000]``.

With ``--start-torchserve`` it also starts TorchServe on the archives (what ``make serve`` does)
on the ports of ``GATEWAY_TORCHSERVE_*_URL``, starts it again whenever it exits, and stops it on
Ctrl-C or SIGTERM (systemd, ``docker stop``, CI runners), also while the models are still
loading; without Java it says so and serves with the ``inprocess`` backend. Everything else
comes from ``GATEWAY_*`` environment variables (see ``service/settings.py``).
"""

from __future__ import annotations

import argparse
import logging
from urllib.parse import urlsplit

import uvicorn

from model_store.signals import unwind_on_sigterm

from .app import create_app
from .http_server import server_config
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
    parser.add_argument(
        "--torchserve-metrics-port", type=int, default=8082, help="with --start-torchserve"
    )
    args = parser.parse_args(argv)
    unwind_on_sigterm()  # uvicorn saves the handler and raises the signal again after its shutdown
    settings = GatewaySettings()
    torchserve = supervisor = None
    if args.start_torchserve and settings.backend == "torchserve":
        from model_store.torchserve.host import TorchServeError, check_java
        from model_store.torchserve.launcher import TorchServe
        from model_store.torchserve.readiness import FRONTEND_WARMUP_REQUESTS
        from model_store.torchserve.supervisor import Supervisor

        try:
            check_java()
        except TorchServeError as exc:
            log.warning(
                "%s\n-> falling back to the inprocess backend (same model code, in this process)",
                exc,
            )
            settings = settings.model_copy(update={"backend": "inprocess"})
        else:
            torchserve = TorchServe(
                settings.models,
                archive_dir=settings.archive_dir,
                inference_port=urlsplit(settings.torchserve_inference_url).port or 8080,
                management_port=urlsplit(settings.torchserve_management_url).port or 8081,
                metrics_port=args.torchserve_metrics_port,
                frontend_warmup=FRONTEND_WARMUP_REQUESTS,
            )
            settings = settings.model_copy(update={"torchserve_key_file": torchserve.key_file})
    try:
        if torchserve is not None:
            torchserve.start()
            torchserve.wait_ready(progress=log.info)
            supervisor = Supervisor(torchserve)
            supervisor.start()
        print(
            f"gateway on http://{args.host}:{args.port} ({settings.backend} backend); "
            "Ctrl-C stops it",
            flush=True,
        )
        uvicorn.Server(server_config(create_app(settings), settings, args.host, args.port)).run()
    finally:
        if supervisor is not None:
            supervisor.stop()
        elif torchserve is not None:
            torchserve.stop()


if __name__ == "__main__":
    main()
