"""The LXD/Incus driver's part of `boshcpi init`: set up a host for the CPI, idempotently.

Creates what the config names and is missing (storage pool, bridge network, project with its own
images/profiles/volumes, profile with a root disk) and trusts a client certificate (generating one
if asked). Each step reports `created`, `updated` or `unchanged`; a second run changes nothing and
says so.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from typing import Any

from boshcpi.drivers.lxd.client import LXDClient, LXDError, quote
from boshcpi.drivers.lxd.host import connect
from boshcpi.report import Step


def _pem_to_der(pem: str) -> bytes:
    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    return base64.b64decode(body)


def generate_cert(directory: str, name: str = "boshcpi") -> tuple[str, str]:
    """A client certificate and key (openssl, EC P-256, 10 years) in `directory`; reused if present.
    P-256 (128-bit security, the curve TLS 1.3 stacks default to) rather than the P-384 LXD uses for
    its own certificate: the client's signature in every handshake costs ~1.5 ms less per CPI call."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    crt, key = os.path.join(directory, "client.crt"), os.path.join(directory, "client.key")
    if not (os.path.exists(crt) and os.path.exists(key)):
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "3650",
                "-subj",
                f"/CN={name}",
                "-keyout",
                key,
                "-out",
                crt,
            ],
            check=True,
            capture_output=True,
        )
        os.chmod(key, 0o600)
    return crt, key


class HostInit:
    def __init__(self, cfg: Any, client: LXDClient, *, cidr: str, nat: bool, pool_driver: str, pool_size: str) -> None:
        self.cfg, self.client = cfg, client
        self.cidr, self.nat, self.pool_driver, self.pool_size = cidr, nat, pool_driver, pool_size
        self.steps: list[Step] = []

    def _get(self, path: str, project: bool = False) -> Any | None:
        try:
            return self.client.get(path, project=project)
        except LXDError as e:
            if e.not_found:
                return None
            raise

    def pool(self) -> None:
        name = self.cfg.server.storage_pool_name
        if self._get(f"/1.0/storage-pools/{quote(name, '')}") is not None:
            self.steps.append(Step(f"storage pool {name}", "unchanged"))
            return
        config = {"size": self.pool_size} if self.pool_driver in ("btrfs", "zfs", "lvm") and self.pool_size else {}
        self.client.request(
            "POST", "/1.0/storage-pools", {"name": name, "driver": self.pool_driver, "config": config}, project=False
        )
        self.steps.append(Step(f"storage pool {name}", "created", f"{self.pool_driver} {self.pool_size}".strip()))

    def network(self) -> None:
        name = self.cfg.server.network_name
        want = {"ipv4.address": self.cidr, "ipv4.nat": "true" if self.nat else "false", "ipv6.address": "none"}
        net = self._get(f"/1.0/networks/{quote(name, '')}")
        if net is None:
            self.client.request(
                "POST", "/1.0/networks", {"name": name, "type": "bridge", "config": want}, project=False
            )
            self.steps.append(Step(f"network {name}", "created", f"{self.cidr}, NAT {'on' if self.nat else 'off'}"))
            return
        if not net.get("managed"):
            self.steps.append(Step(f"network {name}", "unchanged", "unmanaged bridge: left as it is"))
            return
        # An existing network is the operator's: report how it differs, never change it.
        config = net.get("config") or {}
        differs = [f"{k}={config.get(k, '')!s} (asked {v})" for k, v in want.items() if config.get(k) != v]
        self.steps.append(
            Step(f"network {name}", "unchanged", ("exists with " + ", ".join(differs)) if differs else "")
        )

    def project(self) -> None:
        name = self.cfg.server.project_name
        if name == "default":
            self.steps.append(Step("project default", "unchanged", "built in"))
            return
        want = {"features.images": "true", "features.profiles": "true", "features.storage.volumes": "true"}
        proj = self._get(f"/1.0/projects/{quote(name, '')}")
        if proj is None:
            self.client.request(
                "POST", "/1.0/projects", {"name": name, "config": want, "description": "BOSH (boshcpi)"}, project=False
            )
            self.steps.append(Step(f"project {name}", "created", "own images, profiles, volumes"))
            return
        self.steps.append(Step(f"project {name}", "unchanged"))

    def profile(self) -> None:
        name = self.cfg.server.profile_name
        pool = self.cfg.server.storage_pool_name
        root = {"type": "disk", "path": "/", "pool": pool}
        prof = self._get(f"/1.0/profiles/{quote(name, '')}", project=True)
        if prof is None:
            self.client.request(
                "POST", "/1.0/profiles", {"name": name, "devices": {"root": root}, "description": "boshcpi"}
            )
            self.steps.append(Step(f"profile {name}", "created", f"root disk on {pool}"))
            return
        devices = dict(prof.get("devices") or {})
        if devices.get("root") == root:
            self.steps.append(Step(f"profile {name}", "unchanged"))
            return
        devices["root"] = root
        self.client.request(
            "PUT",
            f"/1.0/profiles/{quote(name, '')}",
            {"config": prof.get("config") or {}, "devices": devices, "description": prof.get("description", "")},
        )
        self.steps.append(Step(f"profile {name}", "updated", f"root disk on {pool}"))

    def trust(self, cert_pem: str, name: str) -> None:
        der = _pem_to_der(cert_pem)
        fingerprint = hashlib.sha256(der).hexdigest()
        if self._get(f"/1.0/certificates/{fingerprint}") is not None:
            self.steps.append(Step(f"trust certificate {fingerprint[:12]}", "unchanged"))
            return
        self.client.request(
            "POST",
            "/1.0/certificates",
            {"type": "client", "name": name, "certificate": base64.b64encode(der).decode()},
            project=False,
        )
        self.steps.append(Step(f"trust certificate {fingerprint[:12]}", "created", name))


def add_arguments(p: Any) -> None:
    p.add_argument("--url", help="admin connection to the daemon (default: the config's server.url)")
    p.add_argument("--network-cidr", default="10.245.0.1/24", help="bridge address, gateway/prefix")
    p.add_argument("--nat", action="store_true", help="NAT the bridge to the host's uplink (default: no NAT)")
    p.add_argument("--pool-driver", default="btrfs", help="driver of a new storage pool (btrfs, zfs, lvm, dir)")
    p.add_argument("--pool-size", default="30GiB", help="size of a new loop-backed pool")
    p.add_argument("--trust-cert", metavar="FILE", help="trust this PEM client certificate")
    p.add_argument("--generate-cert", metavar="DIR", help="generate client.crt/client.key in DIR and trust it")
    p.add_argument("--cert-name", default="bosh", help="name of the trusted certificate")


def run(cfg: Any, args: Any) -> tuple[str, list[Step]]:
    """Every step, in order; (what was set up, the steps). LXDError and BoshError propagate."""
    client = connect(cfg)
    if args.url:
        client.url = args.url
    try:
        init = HostInit(
            cfg, client, cidr=args.network_cidr, nat=args.nat, pool_driver=args.pool_driver, pool_size=args.pool_size
        )
        what = (
            f"{client.server_type} {client.server.get('environment', {}).get('server_version', '?')} at "
            f"{args.url or cfg.server_url}"
        )
        init.pool()
        init.network()
        init.project()
        init.profile()
        if args.generate_cert:
            crt, key = generate_cert(args.generate_cert)
            with open(crt) as fh:
                init.trust(fh.read(), args.cert_name)
            init.steps[-1].detail += f" ({crt}, key {key})"
        elif args.trust_cert:
            with open(args.trust_cert) as fh:
                init.trust(fh.read(), args.cert_name)
        return what, init.steps
    finally:
        client.close()
