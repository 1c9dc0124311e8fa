"""Role engine-llamacpp: llama-server replicas serving GGUF models pulled from the registry."""
