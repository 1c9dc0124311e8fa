"""Models as OCI artifacts in Podium's registry: `Registry` is the API the CLI and roles use."""

from podium.registry.client import ModelInfo, ModelTag, Registry
from podium.registry.ref import ModelRef

__all__ = ["ModelInfo", "ModelRef", "ModelTag", "Registry"]
