"""Role trainer: the venv (torch, transformers, peft) and the script that train LoRA adapters on a node."""
