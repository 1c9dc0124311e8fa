"""The local lab: the cached machine image, the host-only network and the machines' cgroups."""
