"""boshcpi: a BOSH CPI for LXD, Incus and libvirt/KVM."""

__version__ = "0.1.0"
