"""pyinfra entry point: `pyinfra inventory/lab.py roles/trainer/deploy.py` (from the repo root)."""

from roles.trainer.tasks import deploy

deploy()
