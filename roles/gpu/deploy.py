"""pyinfra entry point: `pyinfra inventory/lab.py roles/gpu/deploy.py` (from the repo root)."""

from roles.gpu.tasks import deploy

deploy()
