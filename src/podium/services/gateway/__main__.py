"""`python -m podium.services.gateway --config FILE`: the gateway without the rest of the CLI."""

from __future__ import annotations

import sys

import typer

from podium.errors import PodiumError
from podium.services.gateway.command import serve


def main() -> None:
    try:
        typer.run(serve)
    except PodiumError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
