"""LXD and Incus. The stemcell formats this driver takes, for `info` (which loads nothing else of it):
VM stemcells (OpenStack-style root.img, qcow2 or raw, which becomes qcow2 in Python) and warden-style
root filesystem tarballs for system containers."""

STEMCELL_FORMATS = ("openstack-qcow2", "openstack-raw", "warden-tgz", "general-tar")
