"""Role storage: a GlusterFS replicated volume, an NFS export or a local folder, at one path."""
