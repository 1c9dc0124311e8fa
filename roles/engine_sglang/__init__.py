"""Role engine-sglang: SGLang servers on GPU nodes serving models pulled from the registry."""
