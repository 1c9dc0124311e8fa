"""Podium's Model-as-a-Service gateway: OpenAI and Open Inference v2 APIs over engine replicas."""
