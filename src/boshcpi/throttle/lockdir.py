"""Where lock and slot files go when the configured folder cannot be made.

The job's defaults live under /var/vcap/sys/run, which pre-start makes on a director VM. `bosh
create-env` runs the same CPI on the operator's machine, often as an ordinary user, where /var/vcap
does not exist and cannot be made (cloudfoundry/bosh-cli `cloud/cpi_cmd_runner.go` runs bin/cpi there
as whoever runs the CLI). The Go libvirt CPI's file lock sat in world-writable /var/lock and so worked
for them; a lock must not turn into a failed call. Such calls take their locks in a folder of the
user's own instead. CPI processes of one user with one configured path still share that folder, so the
limit still holds among them; where the configured folder cannot be made, nothing else can be using it.
"""

from __future__ import annotations

import errno
import os
import stat

REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)


def usable_dir(wanted: str) -> str:
    """`wanted`, made if need be; else the same name under a private folder of this user's."""
    try:
        os.makedirs(wanted, mode=0o770, exist_ok=True)
        return wanted
    except OSError as e:
        if e.errno not in REFUSED:
            raise
    base = os.path.join(os.environ.get("XDG_RUNTIME_DIR") or "/tmp", f"boshcpi-locks-{os.getuid()}")
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(base)
    # Never follow another user's planted folder or link in a shared /tmp.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"cannot make {wanted}, and {base} is not a private folder of this user's")
    private = os.path.join(base, wanted.strip("/").replace("/", "%"))
    os.makedirs(private, mode=0o700, exist_ok=True)
    return private
