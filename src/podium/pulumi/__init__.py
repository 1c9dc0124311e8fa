"""Podium's Pulumi engine: ComponentResources over the same Plan as `podium up`.

The package is `podium.pulumi`; modules inside import the SDK as `import pulumi`, which is
absolute and never this package."""

from podium.pulumi.cluster import Workload, WorkloadArgs
from podium.pulumi.host import HostComponent, HostComponentArgs
from podium.pulumi.machines import LibvirtNode, LibvirtNodeArgs
from podium.pulumi.program import Appliance, build, run, urls

__all__ = [
    "Appliance",
    "HostComponent",
    "HostComponentArgs",
    "LibvirtNode",
    "LibvirtNodeArgs",
    "Workload",
    "WorkloadArgs",
    "build",
    "run",
    "urls",
]
