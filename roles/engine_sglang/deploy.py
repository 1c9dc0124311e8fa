"""pyinfra entry point: `pyinfra inventory/lab.py roles/engine_sglang/deploy.py` (from the repo root)."""

from roles.engine_sglang.tasks import deploy

deploy()
