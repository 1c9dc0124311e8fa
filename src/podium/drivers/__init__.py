"""Drivers: machines (nspawn, libvirt), the host layer and the cluster layer."""

from podium.drivers import libvirt as _libvirt  # noqa: F401  (registers the "libvirt" driver)
from podium.drivers import nspawn as _nspawn  # noqa: F401  (registers the "nspawn" driver)
from podium.drivers.base import DRIVERS, get_driver

__all__ = ["DRIVERS", "get_driver"]
