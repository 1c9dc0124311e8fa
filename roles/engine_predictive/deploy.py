"""pyinfra entry point: `pyinfra inventory/lab.py roles/engine_predictive/deploy.py` (from the repo root)."""

from roles.engine_predictive.tasks import deploy

deploy()
