"""libvirt (KVM, or QEMU software emulation), over libvirt's own RPC protocol. The stemcell formats
this driver takes, for `info` (which loads nothing else of it): OpenStack-style root.img, qcow2 or raw,
both of which libvirt stores as they come."""

STEMCELL_FORMATS = ("openstack-qcow2", "openstack-raw")
