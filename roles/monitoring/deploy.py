"""pyinfra entry point: `pyinfra inventory/lab.py roles/monitoring/deploy.py` (from the repo root)."""

from roles.monitoring.tasks import deploy

deploy()
