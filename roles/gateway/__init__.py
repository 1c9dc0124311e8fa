"""Role gateway: Podium's Model-as-a-Service gateway on the gateway nodes."""
