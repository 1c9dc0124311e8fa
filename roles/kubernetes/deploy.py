"""pyinfra entry point: `pyinfra inventory/<stack>.py roles/kubernetes/deploy.py` (repo root)."""

from roles.kubernetes.tasks import deploy

deploy()
