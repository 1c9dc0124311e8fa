"""pyinfra entry point: `pyinfra inventory/lab.py roles/gateway/deploy.py` (from the repo root)."""

from roles.gateway.tasks import deploy

deploy()
