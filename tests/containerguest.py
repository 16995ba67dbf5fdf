"""One system container made by boshcpi from the agent stemcell (boshcpi.dev.agentimage), and its
real bosh-agent, driven over its HTTPS mbus as the director drives it (tests/agentclient.py) and
reached through a proxy device on loopback; a job, installed as the CLI installs one, that keeps its
data on the persistent disk and refuses to start without it."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import tarfile
import time
import uuid
from pathlib import Path

from tests import cluster as cl
from tests.agentclient import Agent, AgentError, mbus_cert
from tests.helpers import call

PASSWORD = "mbus-s3cret-pw"
JOB = "keeper"
MONIT = f"""check process {JOB}
  with pidfile /var/vcap/sys/run/{JOB}/{JOB}.pid
  start program "/var/vcap/jobs/{JOB}/bin/ctl start"
  stop program "/var/vcap/jobs/{JOB}/bin/ctl stop"
  group vcap
"""
# A job that, like a database, keeps its data on the persistent disk: it does not start without it.
CTL = f"""#!/bin/sh
RUN=/var/vcap/sys/run/{JOB}
case "$1" in
  start)
    mountpoint -q /var/vcap/store || {{ echo "no persistent disk on /var/vcap/store" >&2; exit 1; }}
    mkdir -p "$RUN" /var/vcap/store/{JOB}
    date +%s >> /var/vcap/store/{JOB}/starts
    n=$(cat /var/vcap/store/{JOB}/count 2>/dev/null || echo 0)
    echo $((n + 1)) > /var/vcap/store/{JOB}/count.tmp && mv /var/vcap/store/{JOB}/count.tmp /var/vcap/store/{JOB}/count
    setsid sh -c 'while :; do sleep 5; done' </dev/null >/dev/null 2>&1 &
    echo $! > "$RUN/{JOB}.pid"
    ;;
  stop)
    [ -f "$RUN/{JOB}.pid" ] && kill "$(cat "$RUN/{JOB}.pid")"
    rm -f "$RUN/{JOB}.pid"
    ;;
esac
exit 0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendered_templates() -> bytes:
    """The rendered-templates archive as the CLI builds it (`tar -czf X -C dir .`: ./<job>/...)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text, mode in ((f"./{JOB}/monit", MONIT, 0o644), (f"./{JOB}/bin/ctl", CTL, 0o755)):
            info = tarfile.TarInfo(name)
            data = text.encode()
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Guest:
    """One container on the private daemon, and its agent."""

    def __init__(self, daemon: cl.Cluster, config: Path, tmp: Path) -> None:
        self.daemon, self.config, self.tmp = daemon, config, tmp
        self.cert = mbus_cert(tmp, "127.0.0.1")
        self.port = free_port()
        self.agent = Agent("127.0.0.1", PASSWORD, self.cert["ca"], port=self.port)
        self.vm = ""

    def call(self, method: str, *args):
        return call(self.config, method, *args)

    def create(self, stemcell: str) -> None:
        env = {
            "bosh": {
                "mbus": {"cert": self.cert},
                "blobstores": [{"provider": "local", "options": {"blobstore_path": "/var/vcap/data/blobs"}}],
                "password": "*",
            }
        }
        net = {"default": {"type": "vip", "ip": "127.0.0.1", "cloud_properties": {}}}
        props = {"cpus": 1, "memory": 1024, "ephemeral_disk": 512}
        self.vm, _ = self.call("create_vm", "agent-life", stemcell, props, net, [], env).ok()
        # The director reaches the agent on the VM's address; here, a proxy on loopback.
        self.daemon.cli(
            "config", "device", "add", self.vm, "mbus", "proxy",
            f"listen=tcp:127.0.0.1:{self.port}", "connect=tcp:127.0.0.1:6868",
        )  # fmt: skip
        self.agent.wait_ready(300)

    def sh(self, script: str, check: bool = True) -> str:
        return self.daemon.cli("exec", self.vm, "--", "sh", "-c", script, check=check)

    def init_pid(self) -> int:
        return int(self.daemon.query(f"/1.0/instances/{self.vm}/state")["pid"])

    def install_job(self) -> None:
        """What `bosh create-env` does to run a job (bosh-cli deployment/instance/instance.go)."""
        blob = rendered_templates()
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        blob_id = str(uuid.uuid4())
        self.agent.call(
            "upload_blob", {"blob_id": blob_id, "checksum": digest, "payload": base64.b64encode(blob).decode()}
        )
        self.agent.call("stop")
        spec = {
            "deployment": "life",
            "name": JOB,
            "index": 0,
            "id": "0",
            "az": "unknown",
            "networks": {},
            "packages": {},
            "job": {"name": JOB, "templates": [{"name": JOB, "version": "1"}]},
            "rendered_templates_archive": {"blobstore_id": blob_id, "sha1": digest},
            "configuration_hash": "life-1",
        }
        self.agent.call("apply", spec)
        self.agent.call("run_script", "pre-start", {})
        self.agent.call("start")

    def state(self, timeout: float = 180) -> dict:
        """get_state full, once the job's process runs (job_state alone is `running` with no process)."""
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            try:
                last = self.agent.call("get_state", "full", timeout=30)
            except (AgentError, OSError) as e:
                last = {"error": str(e)}
            procs = {p.get("name"): p.get("state") for p in last.get("processes") or []}
            if last.get("job_state") == "running" and procs.get(JOB) == "running":
                return last
            time.sleep(2)
        raise AssertionError(f"the job never ran again: {json.dumps(last)[:2000]}\n{self.log()}")

    def count(self) -> int:
        """The job's own counter on the store: one more at every start that found the store."""
        return int(self.sh(f"cat /var/vcap/store/{JOB}/count").strip())

    def starts(self) -> int:
        return len(self.sh(f"cat /var/vcap/store/{JOB}/starts").split())

    def log(self) -> str:
        out = self.sh("tail -n 40 /var/vcap/monit/monit.log; journalctl -u bosh-agent -n 60 --no-pager", check=False)
        return out[-6000:]
