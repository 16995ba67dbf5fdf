"""What the agent images' guests carry besides Debian's packages and the agent (agentimage.py): a
stand-in monit or the real one behind a CSRF-token proxy, the units that start them and the agent,
the stemcell's scripts, the agent's own config for a warden-style and an OpenStack-style stemcell,
and the disk report a VM guest prints on its console."""

from __future__ import annotations

FAKE_MONIT = r'''#!/usr/bin/python3
"""A stand-in for monit on 127.0.0.1:2822: no services, an incarnation that changes on each start."""
import socket, time
inc = int(time.time() * 1000) % 2_000_000_000
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 2822))
srv.listen(16)
body = ('<?xml version="1.0" encoding="ISO-8859-1"?><monit id="boshcpi" incarnation="%d" version="5.2.5">'
        "<services></services><servicegroups></servicegroups></monit>" % inc).encode()
while True:
    conn, _ = srv.accept()
    try:
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        head = b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % len(body)
        conn.sendall(head + (body if data.startswith(b"GET") else b""))
    except OSError:
        pass
    finally:
        conn.close()
'''

MONIT_CLI = """#!/bin/sh
# What the agent runs as `monit ...` (reload, stop -g vcap, summary): nothing to do without services.
case "$1" in reload) systemctl restart monit ;; esac
exit 0
"""

UNITS = {
    "bosh-agent.service": """[Unit]
Description=BOSH agent
After=network.target monit.service
[Service]
ExecStart=/var/vcap/bosh/bin/bosh-agent -P ubuntu -C /var/vcap/bosh/agent.json
Environment=PATH=/var/vcap/bosh/bin:/usr/sbin:/usr/bin:/sbin:/bin
Restart=always
RestartSec=2
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
""",
    "monit.service": """[Unit]
Description=monit stand-in for the BOSH agent
# The agent reloads monit with `systemctl kill` + `systemctl start`, several times per deploy.
StartLimitIntervalSec=0
[Service]
ExecStart=/var/vcap/bosh/bin/fake-monit
Restart=always
[Install]
WantedBy=multi-user.target
""",
}

# Test instrumentation of the VM image (not part of any resolution the agent does): every 2 s, when
# something changed, print to the serial console which block devices hold /var/vcap/store and
# /var/vcap/data and what serial each virtio disk has, the store's size in MiB, how many mounts its
# device has and what is on the migration target, and leave on a freshly mounted store a marker
# naming the disk it was first written to (so a test can tell the data came back with its disk).
DISK_REPORT = r"""#!/bin/sh
last=""
while true; do
  ids=""
  for link in /dev/disk/by-id/virtio-*; do
    [ -e "$link" ] || continue
    case "$link" in *-part*) continue ;; esac
    ids="$ids ${link#/dev/disk/by-id/virtio-}=$(basename "$(readlink -f "$link")")"
  done
  store=$(findmnt -n -o SOURCE /var/vcap/store 2>/dev/null)
  data=$(findmnt -n -o SOURCE /var/vcap/data 2>/dev/null)
  marker=""
  if [ -n "$store" ]; then
    if [ ! -f /var/vcap/store/boshcpi-marker ]; then
      dev=$(basename "$store"); dev=${dev%%[0-9]*}
      for pair in $ids; do [ "${pair#*=}" = "$dev" ] && echo "${pair%%=*}" > /var/vcap/store/boshcpi-marker; done
    fi
    marker=$(cat /var/vcap/store/boshcpi-marker 2>/dev/null)
  fi
  size=none; mounts=0
  if [ -n "$store" ]; then
    size=$(df -m --output=size /var/vcap/store | tail -n 1 | tr -d ' ')
    mounts=$(grep -c "^$store " /proc/self/mounts)
  fi
  mig=$(findmnt -n -o SOURCE /var/vcap/store_migration_target 2>/dev/null)
  line="BOSHCPI-REPORT store=${store:-none} data=${data:-none} marker=${marker:-none} size=$size mounts=$mounts mig=${mig:-none} ids=$(echo $ids | tr ' ' ',')"
  if [ "$line" != "$last" ]; then echo "$line" > /dev/ttyS0; last="$line"; fi
  sleep 2
done
"""  # noqa: E501

# The stemcell's monit set-up (bosh-linux-stemcell-builder stemcell_builder/stages/bosh_monit: monitrc
# in /var/vcap/bosh/etc, credentials from the file the agent writes, job files under
# /var/vcap/monit/job), run by Debian's monit 5.33 so that job processes really start. One difference
# from a stemcell: monit >= 5.20 wants a CSRF token on every POST (CVE-2016-7067), which the agent's
# HTTP client never sends (bosh-agent jobsupervisor/monit/http_client.go makeRequest), so monit's
# httpd listens on 2823 and a small proxy on 127.0.0.1:2822, where the agent looks
# (jobsupervisor/monit/provider.go), adds the token. The `monit` CLI the agent runs (`monit stop -g
# vcap`) finds the same control file at /etc/monitrc and handles the token itself.
REAL_MONITRC = """set daemon 5
set logfile /var/vcap/monit/monit.log
set httpd port 2823 and use address 127.0.0.1
  allow cleartext /var/vcap/monit/monit.user
include /var/vcap/monit/*.monitrc
include /var/vcap/monit/job/*.monitrc
"""

MONIT_CSRF_PROXY = r"""#!/usr/bin/python3
# 127.0.0.1:2822 -> monit's httpd on 2823, one request per connection; POSTs get monit's CSRF token.
import socket, threading
TOKEN = b"boshcpi"
def handle(conn):
    try:
        conn.settimeout(30)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = 0
        for line in lines[1:]:
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        keep = [l for l in lines[1:] if not l.lower().startswith((b"content-length:", b"connection:"))]
        if lines[0].startswith(b"POST "):
            body = body + (b"&" if body else b"") + b"securitytoken=" + TOKEN
            keep.append(b"Cookie: securitytoken=" + TOKEN)
        keep += [b"Content-Length: %d" % len(body), b"Connection: close"]
        up = socket.create_connection(("127.0.0.1", 2823), timeout=30)
        up.sendall(b"\r\n".join([lines[0], *keep]) + b"\r\n\r\n" + body)
        while True:
            chunk = up.recv(65536)
            if not chunk:
                break
            conn.sendall(chunk)
        up.close()
    except OSError:
        pass
    finally:
        conn.close()
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 2822))
srv.listen(32)
while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"""

# The `monit` CLI the agent runs, on PATH before Debian's: the stemcell's monit 5.2.5 does nothing for
# a group without services, where Debian's 5.33 fails with "Group 'vcap' not found", and the agent's
# `stop` on a VM with no job yet runs `monit stop -g vcap` (bosh-agent
# jobsupervisor/monit_job_supervisor.go StopAndWait): the director's first deploy of it then fails.
REAL_MONIT_CLI = """#!/bin/sh
err=$(mktemp)
/usr/bin/monit "$@" 2>"$err"; rc=$?
if [ "$rc" -ne 0 ] && grep -q "^Group '.*' not found" "$err"; then rc=0; else cat "$err" >&2; fi
rm -f "$err"
exit "$rc"
"""

REAL_MONIT_UNITS = {
    # The stemcell's unit (stages/bosh_monit/assets/monit.service, with its condition: on a VM the
    # folder appears once the agent mounted the ephemeral disk): the agent restarts it with
    # `systemctl kill monit` + `systemctl start monit` (jobsupervisor/monit_job_supervisor.go Reload).
    "monit.service": """[Unit]
Description=monit, as a BOSH stemcell runs it
After=network.target
ConditionPathExists=/var/vcap/data/sys/run
StartLimitIntervalSec=0
[Service]
ExecStart=/usr/bin/monit -I -c /var/vcap/bosh/etc/monitrc
Restart=always
KillMode=process
[Install]
WantedBy=multi-user.target
""",
    "monit-csrf-proxy.service": """[Unit]
Description=boshcpi test stemcell: monit's CSRF token for the agent's requests
[Service]
ExecStart=/var/vcap/bosh/bin/monit-csrf-proxy
Restart=always
[Install]
WantedBy=multi-user.target
""",
}

SCRIPTS = {
    "bosh-agent-rc": "#!/bin/sh\nexit 0\n",
    "bosh-start-logging-and-auditing": "#!/bin/sh\nexit 0\n",
    "sync-time": "#!/bin/sh\nexit 0\n",
    "restart_networking": "#!/bin/sh\nsystemctl restart systemd-networkd\n",
}

WARDEN_AGENT = {
    "Platform": {
        "Linux": {
            "UseDefaultTmpDir": True,
            "UsePreformattedPersistentDisk": True,
            "BindMountPersistentDisk": True,
            "SkipDiskSetup": True,
            "ServiceManager": "systemd",
        }
    },
    "Infrastructure": {
        "Settings": {"Sources": [{"Type": "File", "SettingsPath": "/var/vcap/bosh/warden-cpi-agent-env.json"}]}
    },
}

# bosh-linux-stemcell-builder stemcell_builder/stages/bosh_openstack_agent_settings: the ConfigDrive
# source (the HTTP metadata source is left out: nothing here may reach 169.254.169.254).
OPENSTACK_AGENT = {
    "Platform": {
        "Linux": {
            "CreatePartitionIfNoEphemeralDisk": True,
            "DevicePathResolutionType": "virtio",
            "PartitionerType": "parted",
            "ServiceManager": "systemd",
        }
    },
    "Infrastructure": {
        "Settings": {
            "Sources": [
                {
                    "Type": "ConfigDrive",
                    "DiskPaths": ["/dev/disk/by-label/CONFIG-2", "/dev/disk/by-label/config-2"],
                    "MetaDataPath": "ec2/latest/meta-data.json",
                    "UserDataPath": "ec2/latest/user-data",
                }
            ],
            "UseServerName": True,
            "UseRegistry": False,
        }
    },
}
