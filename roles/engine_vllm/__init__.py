"""Role engine-vllm: vLLM OpenAI servers (GPU, or the CPU build) serving models pulled from the registry."""
