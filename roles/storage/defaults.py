"""Defaults of role storage; the plan's settings arrive as host data `podium_storage`."""

DEFAULTS = {
    # A blank disk for the bricks (e.g. /dev/sdb): formatted XFS once and mounted at the folder
    # above the brick. None keeps bricks in a folder of the root file system.
    "storage_brick_device": None,
    "storage_glusterd_vol": "/etc/glusterfs/glusterd.vol",
    "storage_exports_file": "/etc/exports.d/podium.exports",
}
