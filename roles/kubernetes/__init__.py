"""Role kubernetes: k3s from the artifact mirror, server first, agents joined with the token."""
