"""Podium's pyinfra roles: one folder per component, each with deploy, check and remove."""
