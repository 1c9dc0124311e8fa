"""pyinfra entry point: `pyinfra inventory/lab.py roles/storage/deploy.py` (from the repo root)."""

from roles.storage.tasks import deploy

deploy()
