"""The gateway's `serve` command, shared by `podium gateway serve` and `python -m podium.services.gateway`."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from podium.errors import InvalidInput


def serve(
    config: Path = typer.Option(..., "--config", help="Gateway config file (YAML)."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Serve the OpenAI and Open Inference v2 APIs in front of the configured engines.

    Example: podium gateway serve --config /etc/podium/gateway.yaml
    """
    # Imported here: the rest of the CLI starts without uvicorn and Starlette.
    from podium.services.gateway.config import load_config
    from podium.services.gateway.server import run

    if log_level not in ("debug", "info", "warning", "error"):
        raise InvalidInput(f"--log-level {log_level!r} must be debug, info, warning or error")
    settings = load_config(config)
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run(settings, log_level)
