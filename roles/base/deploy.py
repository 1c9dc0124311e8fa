"""pyinfra entry point: `pyinfra inventory/lab.py roles/base/deploy.py` (from the repo root)."""

from roles.base.tasks import deploy

deploy()
