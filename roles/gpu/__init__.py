"""Role gpu: NVIDIA driver, container toolkit, persistence daemon and fabric manager on GPU nodes."""
