"""Development and demo code: test stemcells, the bootable test image, the guest images with the real
bosh-agent, and `boshcpi demo`. Nothing in the CPI path imports this package (tests/unit/test_layout.py
checks it), and the BOSH release does not ship it."""
