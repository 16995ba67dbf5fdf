"""The CPI where it spends its life: on a director VM, compiled there by the real agent, run there by
the director for every deploy, reaching the IaaS over the network.

`bosh create-env` (the real CLI) deploys an instance that runs the release's `lxd_cpi` and
`libvirt_cpi` jobs, as bosh-deployment's bosh.yml puts the CPI job on the `bosh` instance. The guest is
stemcell-like: a system container with exactly a stock stemcell's build tools and -dev packages
(agentimage.STEMCELL_BUILD_PACKAGES; no liblzma-dev, no libffi-dev, no libvirt0, no qemu-img), the
real bosh-agent, and a real monit. The CLI has the agent compile every package there (bosh-cli
deployment/instance/state/remote_package_compiler.go: `compile_package`, on every deploy). Then,
inside the guest, as the director would (user vcap, the rendered job's bin/cpi and config):

- lxd_cpi drives the host's LXD or Incus over HTTPS on the test bridge's address, with the client
  certificate the manifest generated (trusted with `boshcpi init --trust-cert`): info, a container
  stemcell and a raw VM stemcell (a valid qcow2 in the daemon, made without qemu-img), a sibling
  container, has_vm, a disk attached, and everything deleted again;
- libvirt_cpi drives the host's libvirtd over TCP (on the LXD guest) or TLS (on the Incus guest), with
  its own RPC client: info, a stemcell, a domain, has_vm, a disk attached and detached, everything
  deleted, and `boshcpi cleanup` finding nothing left.

The jobs' throttle and cleanup processes run under monit (Debian's monit 5.33, set up as a stemcell
sets up its own; see guestfiles.REAL_MONITRC)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from boshcpi.dev import agentimage, stemcells
from tests import boshcli
from tests.helpers import ROOT, require_tool
from tests.integration.test_lxd_containers import _check_qcow2_matches_raw

pytestmark = [pytest.mark.slow, pytest.mark.libvirt]

BRIDGE = {"lxd": ("10.245.10.1", 8443), "incus": ("10.245.20.1", 8444)}
LIBVIRT_LISTEN = "10.245.10.1"
LIBVIRT_PKI = Path("/var/lib/boshcpi-dev/libvirt-pki")
LIBVIRT_NET = ("boshcpi-test-net", "10.245.30")
AS_VCAP = ("--user", "1000", "--group", "1000", "--env", "HOME=/home/vcap")


@pytest.fixture(scope="module")
def stemcell_like_tgz() -> Path:
    agent = require_tool("bosh-agent")
    return agentimage.stemcell_tarball(agentimage.container_stemcell(agent, stemcell_like=True))


def _listening(addr: str, port: int) -> bool:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
    return f"{addr}:{port}" in out


class Guest:
    """The deployed instance: commands in it, files into it, the CPI jobs' bin/cpi run in it."""

    def __init__(self, ctx, vm: str) -> None:
        self.ctx, self.vm = ctx, vm

    def run(self, *cmd: str, user: bool = False, stdin: str | None = None, check: bool = True) -> str:
        args = [self.ctx.cli, "--project", self.ctx.project, "exec", self.vm, *(AS_VCAP if user else ()), "--", *cmd]
        proc = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=900)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} in the guest failed: {proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        return proc.stdout

    def push(self, src: Path, dest: str) -> None:
        self.ctx.cli_run(
            "file", "push", "--uid", "1000", "--gid", "1000", "--mode", "0644", str(src), f"{self.vm}{dest}"
        )

    def cpi(self, job: str, method: str, *args) -> dict:
        request = {"method": method, "arguments": list(args), "context": {"director_uuid": "guest"}, "api_version": 2}
        out = self.run(f"/var/vcap/jobs/{job}/bin/cpi", user=True, stdin=json.dumps(request))
        resp = json.loads(out)
        assert resp["error"] is None, f"{job} {method} in the guest: {resp['error']}\n{resp['log'][-2000:]}"
        return resp["result"]


def _director_manifest(ctx, kind, tmp, release, dummy, stemcell, ip, libvirt_pool, libvirt_transport) -> Path:
    bridge, port = BRIDGE[kind]
    server_crt = Path(f"/var/lib/{kind}/server.crt").read_text()
    mbus = "nats://nats:guest-s3cret@127.0.0.1:4222"
    lxd_cpi = {
        "server": {
            "type": kind,
            "url": f"https://{bridge}:{port}",
            "tls_client_cert": "((director_client.certificate))",
            "tls_client_key": "((director_client.private_key))",
            "tls_server_cert": server_crt,
            "project_name": ctx.project,
            "network_name": ctx.config["server"]["network_name"],
            "storage_pool_name": ctx.config["server"]["storage_pool_name"],
        },
        "agent": {"mbus": mbus},
        "throttle_config": {"enabled": True},
        "cleanup": {"enabled": True},
    }
    libvirt = {"type": libvirt_transport, "host": LIBVIRT_LISTEN, "domain_type": "qemu"}
    if libvirt_transport == "tls":
        libvirt["client"] = {
            "certificate": (LIBVIRT_PKI / "clientcert.pem").read_text(),
            "private_key": (LIBVIRT_PKI / "clientkey.pem").read_text(),
        }
        libvirt["server_ca"] = {"certificate": (LIBVIRT_PKI / "cacert.pem").read_text()}
    libvirt_cpi = {
        "libvirt": libvirt,
        "settings": {"storage_pool_name": libvirt_pool, "network_name": LIBVIRT_NET[0]},
        "agent": {"mbus": mbus},
        "throttle_config": {"enabled": True},
        "cleanup": {"enabled": True},
    }
    jobs = [
        {"name": "lxd_cpi", "release": "boshcpi", "properties": {"lxd_cpi": lxd_cpi}},
        {"name": "libvirt_cpi", "release": "boshcpi", "properties": {"libvirt_cpi": libvirt_cpi}},
        {"name": "trivial", "release": "e2e-dummy"},
    ]
    client_cert = {
        "name": "director_client",
        "type": "certificate",
        "options": {"ca": "default_ca", "common_name": "boshcpi-director", "extended_key_usage": ["client_auth"]},
    }
    server = {k: ctx.config["server"][k] for k in ("type", "url", "project_name", "network_name", "storage_pool_name")}
    return boshcli.manifest(
        tmp,
        f"director-{kind}",
        (release, dummy),
        stemcell,
        {"instance_type": "c2-m2", "ephemeral_disk": 4096},
        ctx.subnet,
        ip,
        "lxd_cpi",
        {"server": server},
        instance_jobs=jobs,
        variables=[client_cert],
    )


def _trust(ctx, creds: Path, tmp: Path) -> str:
    """`boshcpi init --trust-cert` with the certificate the manifest generated; its fingerprint."""
    cert = tmp / "director-client.crt"
    cert.write_text(yaml.safe_load(creds.read_text())["director_client"]["certificate"])
    out = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-m", "boshcpi.cli", "init", "--config", str(ctx.config_path),
         "--trust-cert", str(cert), "--cert-name", f"director-{ctx.project}"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    fp = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"], capture_output=True, text=True
    ).stdout
    return fp.split("=", 1)[1].strip().replace(":", "").lower()


def _wait_processes(guest: Guest, names: list[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    summary = ""
    while time.monotonic() < deadline:
        summary = guest.run("monit", "summary", check=False)
        if all(re.search(rf"{n}\W+(Running|OK)", summary) for n in names):
            return summary
        time.sleep(2)
    raise AssertionError(f"monit did not run {names}:\n{summary}\n{guest.run('cat', '/var/vcap/monit/monit.log')}")


def _lxd_side(ctx, guest: Guest, test_stemcells, tmp: Path, kind: str) -> None:
    warden, raw = test_stemcells["warden"], test_stemcells["vm-raw"]
    guest.run("mkdir", "-p", "/var/vcap/data/tmp/sc-c", "/var/vcap/data/tmp/sc-v")
    guest.run("chown", "-R", "vcap:vcap", "/var/vcap/data/tmp")
    guest.push(warden / "image", "/var/vcap/data/tmp/sc-c/image")
    guest.push(raw / "image", "/var/vcap/data/tmp/sc-v/image")
    assert {"warden-tgz", "openstack-raw"} <= set(guest.cpi("lxd_cpi", "info")["stemcell_formats"])
    sc_c = guest.cpi("lxd_cpi", "create_stemcell", "/var/vcap/data/tmp/sc-c/image", stemcells.cloud_properties(warden))
    sc_v = guest.cpi("lxd_cpi", "create_stemcell", "/var/vcap/data/tmp/sc-v/image", stemcells.cloud_properties(raw))
    fingerprint = ctx.api(f"/1.0/images/aliases/{sc_v}")["target"]
    assert ctx.api(f"/1.0/images/{fingerprint}")["type"] == "virtual-machine"
    _check_qcow2_matches_raw(ctx, fingerprint, raw / "image", tmp)
    ip = f"{ctx.subnet}.{160 + uuid.uuid4().int % 30}"
    net = {
        "default": {
            "type": "manual", "ip": ip, "netmask": "255.255.255.0", "gateway": f"{ctx.subnet}.1",
            "dns": [f"{ctx.subnet}.1"], "default": ["dns", "gateway"], "cloud_properties": {},
        }
    }  # fmt: skip
    vm, _ = guest.cpi("lxd_cpi", "create_vm", "sibling", sc_c, {"ephemeral_disk": 64}, net, [], {})
    assert ctx.api(f"/1.0/instances/{vm}")["status"] == "Running"
    assert guest.cpi("lxd_cpi", "has_vm", vm) is True
    disk = guest.cpi("lxd_cpi", "create_disk", 16, {}, vm)
    guest.cpi("lxd_cpi", "attach_disk", vm, disk)
    assert any(d.get("source") == disk for d in ctx.api(f"/1.0/instances/{vm}")["devices"].values())
    guest.cpi("lxd_cpi", "delete_vm", vm)
    assert guest.cpi("lxd_cpi", "has_vm", vm) is False
    guest.cpi("lxd_cpi", "delete_disk", disk)
    guest.cpi("lxd_cpi", "delete_stemcell", sc_c)
    guest.cpi("lxd_cpi", "delete_stemcell", sc_v)
    assert vm not in ctx.instances() and disk not in ctx.volumes()
    assert ctx.api(f"/1.0/images/aliases/{sc_c}", missing_ok=True) is None


def _libvirt_side(guest: Guest, test_stemcells, libvirt_pool: str) -> None:
    from boshcpi.drivers.libvirt import remote

    qcow2 = test_stemcells["vm-qcow2"]
    guest.run("mkdir", "-p", "/var/vcap/data/tmp/sc-l")
    guest.run("chown", "-R", "vcap:vcap", "/var/vcap/data/tmp")
    guest.push(qcow2 / "image", "/var/vcap/data/tmp/sc-l/image")
    conn = remote.open("qemu:///system")
    try:
        assert "openstack-qcow2" in guest.cpi("libvirt_cpi", "info")["stemcell_formats"]
        sc = guest.cpi(
            "libvirt_cpi", "create_stemcell", "/var/vcap/data/tmp/sc-l/image", stemcells.cloud_properties(qcow2)
        )
        net = {
            "default": {
                "type": "manual", "ip": f"{LIBVIRT_NET[1]}.{60 + uuid.uuid4().int % 30}", "netmask": "255.255.255.0",
                "gateway": f"{LIBVIRT_NET[1]}.1", "dns": [f"{LIBVIRT_NET[1]}.1"], "default": ["dns", "gateway"],
                "cloud_properties": {},
            }
        }  # fmt: skip
        vm, _ = guest.cpi("libvirt_cpi", "create_vm", "sibling", sc, {"cpu": 1, "ram": 256}, net, [], {})
        assert conn.lookupByName(vm).isActive()
        assert guest.cpi("libvirt_cpi", "has_vm", vm) is True
        disk = guest.cpi("libvirt_cpi", "create_disk", 16, {}, vm)
        guest.cpi("libvirt_cpi", "attach_disk", vm, disk)
        assert disk in conn.lookupByName(vm).XMLDesc(0)
        guest.cpi("libvirt_cpi", "detach_disk", vm, disk)
        assert disk not in conn.lookupByName(vm).XMLDesc(remote.VIR_DOMAIN_XML_INACTIVE)
        guest.cpi("libvirt_cpi", "delete_vm", vm)
        assert guest.cpi("libvirt_cpi", "has_vm", vm) is False
        guest.cpi("libvirt_cpi", "delete_disk", disk)
        guest.cpi("libvirt_cpi", "delete_stemcell", sc)
        pool = conn.storagePoolLookupByName(libvirt_pool)
        pool.refresh(0)
        assert pool.listVolumes() == []
        cleanup = (
            "/var/vcap/packages/boshcpi/bin/boshcpi", "cleanup", "--config",
            "/var/vcap/jobs/libvirt_cpi/config/cpi.json", "--json", "--older-than", "1h",
        )  # fmt: skip
        assert json.loads(guest.run(*cleanup, user=True))["orphans"] == []
        # A config drive nobody uses, made a moment ago (as an in-flight create_vm's is): from the
        # director its path names nothing, so its age must come from libvirtd, and it is young.
        name = f"vol-c-{uuid.uuid4()}-{uuid.uuid4().hex[:6]}"
        vol = pool.createXML(
            f"<volume><name>{name}</name><capacity unit='KiB'>64</capacity><target><format type='raw'/></target>"
            "</volume>"
        )
        try:
            assert json.loads(guest.run(*cleanup, user=True))["orphans"] == []
            old = time.time() - 7200  # two hours ago, on the libvirt host
            os.utime(vol.path(), (old, old))
            pool.refresh(0)
            orphans = json.loads(guest.run(*cleanup, user=True))["orphans"]
            assert [o["name"] for o in orphans] == [name]
        finally:
            vol.delete(0)
    finally:
        conn.close()


@pytest.mark.parametrize("kind,libvirt_transport", [("lxd", "tcp"), ("incus", "tls")])
def test_director_vm_compiles_the_release_and_drives_the_host(
    request, kind, libvirt_transport, tmp_path, stemcell_like_tgz, test_stemcells, libvirt_pool
):
    ctx = request.getfixturevalue(kind)
    bridge, port = BRIDGE[kind]
    if not _listening(bridge, port):
        pytest.skip(f"not run: {kind} does not listen on its test bridge ({bridge}:{port}; make host sets it)")
    if not (_listening(LIBVIRT_LISTEN, 16509) and _listening(LIBVIRT_LISTEN, 16514)):
        pytest.skip(f"not run: libvirtd does not listen on {LIBVIRT_LISTEN} (make host sets it)")
    release = boshcli.boshcpi_release()
    dummy = boshcli.dummy_release(tmp_path)
    ip = f"{ctx.subnet}.{120 + uuid.uuid4().int % 30}"
    path = _director_manifest(
        ctx, kind, tmp_path, release, dummy, stemcell_like_tgz, ip, libvirt_pool, libvirt_transport
    )
    state, creds = tmp_path / "state.json", tmp_path / "creds.yml"
    boshcli.new_state(state)
    boshcli.restore_compiled()
    before = (set(ctx.instances()), set(ctx.volumes()), set(ctx.images()))
    args = ["create-env", str(path), "--state", str(state), "--vars-store", str(creds)]
    fingerprint = ""
    try:
        # --tty: the CLI prints its stages (with each compile's time) only to a terminal otherwise.
        out = boshcli.timed(f"director create-env ({kind})", boshcli.run, "--tty", *args)
        boshcli.keep_compiled()
        # Only the deploy stage's compiles: the installation's (the CPI, on this machine) come before it.
        log_text = out.stdout + out.stderr
        deploy = log_text.split("Started deploying", 1)[-1]  # bosh-cli deployment_preparer.go: the deploy stage
        compiled = [line.strip() for line in deploy.splitlines() if "Compiling package" in line]
        print("\n".join(compiled))
        # The agent compiled python3 and boshcpi on the guest (the CLI's remote compiler).
        assert any("python3/" in line and "Finished" in line for line in compiled), log_text[-3000:]
        vm = json.loads(state.read_text())["current_vm_cid"]
        guest = Guest(ctx, vm)
        # The guest is stemcell-like, and its python3 was built without what the stemcell lacks.
        assert (
            guest.run(
                "sh", "-c", "dpkg -s liblzma-dev libffi-dev libvirt0 qemu-utils 2>&1 | grep -c 'is not installed'"
            ).strip()
            == "4"
        )
        py = "/var/vcap/packages/python3/bin/python3"
        assert guest.run(py, "-c", "import _ssl, zlib, pyexpat; print('ok')").strip() == "ok"
        _wait_processes(guest, ["lxd_cpi_throttle", "lxd_cpi_cleanup", "libvirt_cpi_throttle", "libvirt_cpi_cleanup"])
        guest.run("test", "-S", "/var/vcap/sys/run/lxd_cpi/throttle.sock")  # the lease server is up
        fingerprint = _trust(ctx, creds, tmp_path)
        _lxd_side(ctx, guest, test_stemcells, tmp_path, kind)
        _libvirt_side(guest, test_stemcells, libvirt_pool)
    finally:
        boshcli.delete_env(f"director {kind}", path, state, creds)
        if fingerprint:
            ctx.cli_run("config", "trust", "remove", fingerprint, check=False)
    after = (set(ctx.instances()), set(ctx.volumes()), set(ctx.images()))
    assert after == before, f"left behind: {[a - b for a, b in zip(after, before, strict=True)]}"
    print(f"timings: {json.dumps(boshcli.TIMINGS)}")
