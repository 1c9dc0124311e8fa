"""pyinfra entry point: `pyinfra inventory/lab.py roles/engine_vllm/deploy.py` (from the repo root)."""

from roles.engine_vllm.tasks import deploy

deploy()
