"""Role registry: docker-registry holding the models, behind nginx for TLS and per-account rights."""
