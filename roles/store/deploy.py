"""pyinfra entry point: `pyinfra inventory/hybrid.py roles/store/deploy.py` (from the repo root)."""

from roles.store.tasks import deploy

deploy()
