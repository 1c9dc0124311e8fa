"""pyinfra entry point: `pyinfra inventory/lab.py roles/registry/deploy.py` (from the repo root)."""

from roles.registry.tasks import deploy

deploy()
