"""Role mirror: the stack's bundle served over TLS by one node, every node's only package source."""
