"""pyinfra entry point: `pyinfra inventory/lab.py roles/engine_llamacpp/deploy.py` (from the repo root)."""

from roles.engine_llamacpp.tasks import deploy

deploy()
