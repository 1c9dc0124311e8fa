"""Fine-tuning: chat datasets, LoRA training on a node, and adapters converted for llama.cpp."""
