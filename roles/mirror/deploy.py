"""pyinfra entry point: `pyinfra inventory/lab.py roles/mirror/deploy.py` (from the repo root)."""

from roles.mirror.tasks import deploy

deploy()
