"""pyinfra entry point: `pyinfra inventory/lab.py roles/network/deploy.py` (from the repo root)."""

from roles.network.tasks import deploy

deploy()
