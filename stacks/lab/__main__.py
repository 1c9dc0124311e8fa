"""Pulumi program of this stack: the same Plan as `podium plan`, as ComponentResources."""

from pathlib import Path

from podium.pulumi import run

appliance = run(Path(__file__).parent)
