"""A real BOSH director (cloudfoundry/bosh, run from a source tree prepared outside the project) with
boshcpi as its CPI, for the tests that need the director's own call sequences.

The tree is found at `$BOSH_DIRECTOR_SRC` or `/opt/bosh-director/src` (the tag's `src/` with its
vendored gems installed: `../shared/tools/README.md` says which tag runs here); without it, or
without what it runs on, the tests say "not run: no director (...)". Nothing of the director is in
this project: this module only starts, drives and stops it.

What a director needs, each started here and stopped by the PID this module got (a process group of
its own, so a worker's children go with it), all on loopback unless said otherwise:
- PostgreSQL (Debian's), its own cluster in the run's folder, run as the `postgres` user;
- nats-server (Debian's) with TLS and client certificates: the agent takes only a server certificate
  whose CN matches `*.nats.bosh-internal` (bosh-agent `mbus/nats_handler.go`); it listens on every
  address, so the containers reach it on their bridge's host address (and only they can);
- the director's API (puma, `bin/bosh-director`), after its migrations, and workers with
  `QUEUES=normal,urgent` (cloudfoundry/bosh `jobs/director/templates/worker_ctl.erb`; without the
  queues, ssh and instance tasks are never picked up);
- nginx (Debian's) as the TLS front of the API, as the director job runs it
  (`jobs/director/templates/nginx.conf.erb`). Debian's nginx has no upload module, so releases and
  stemcells go up by URL, from a loopback HTTP server here;
- `verify_multidigest_path`: a stand-in with the real tool's command line
  (cloudfoundry/bosh `lib/bosh/director/digest/multi_digest.rb`), computing the digests itself;
- a `local` blobstore: a folder the director writes and every container sees (a disk device of the
  test project's profile), at the path the agents are told.
"""

from __future__ import annotations

import functools
import glob
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import ROOT

SOURCE = Path(os.environ.get("BOSH_DIRECTOR_SRC", "/opt/bosh-director/src"))
PASSWORD = "director-s3cret-pw"
AGENT_BLOBSTORE = "/var/vcap/director-blobstore"
# The bridges' host addresses (tests/conftest.py DAEMONS): the containers reach NATS there.
BRIDGE_HOSTS = ("10.245.10.1", "10.245.20.1")


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


def missing() -> str | None:
    """Why the director cannot run here, or None."""
    needs = {
        "the director tree": (SOURCE / "bosh-director" / "bin" / "bosh-director").is_file(),
        "its installed gems (bundle install in the tree)": (SOURCE / ".bundle" / "config").is_file(),
        "bundle (Debian bundler)": shutil.which("bundle") is not None,
        "PostgreSQL (Debian postgresql)": _postgres_bin() is not None,
        "nats-server (Debian nats-server)": shutil.which("nats-server") is not None,
        "nginx (Debian nginx-light)": shutil.which("nginx") is not None,
    }
    lacking = [what for what, ok in needs.items() if not ok]
    if lacking:
        return f"not run: no director ({', '.join(lacking)} missing; set BOSH_DIRECTOR_SRC or prepare {SOURCE})"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"openssl {' '.join(args[:2])}: {proc.stderr}"


def make_pki(d: Path) -> None:
    """One CA for everything (the director signs each agent's NATS client certificate with it), the
    NATS server's certificate, the director's NATS client certificate, and the API front's."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7", "-subj", "/CN=boshcpi-test-director-ca",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
    )  # fmt: skip
    ips = ",".join(f"IP:{ip}" for ip in ("127.0.0.1", *BRIDGE_HOSTS))
    certs = {
        "nats": (
            "/O=Cloud Foundry/CN=default.nats.bosh-internal",
            f"subjectAltName={ips}\nextendedKeyUsage=serverAuth",
        ),
        "director": ("/O=Cloud Foundry/CN=default.director.bosh-internal", "extendedKeyUsage=clientAuth"),
        "web": ("/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
    }
    for name, (subject, ext) in certs.items():
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", str(d / f"{name}.key"),
                 "-out", str(d / f"{name}.csr"))  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
            "-CAcreateserial", "-days", "7", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"),
        )  # fmt: skip
        # The director reads RSA keys in the traditional format (OpenSSL::PKey::RSA.new).
        _openssl("rsa", "-in", str(d / f"{name}.key"), "-traditional", "-out", str(d / f"{name}.key"))
    _openssl("rsa", "-in", str(d / "ca.key"), "-traditional", "-out", str(d / "ca.key"))


VERIFY_MULTIDIGEST = """#!{python}
# A stand-in for bosh-utils' verify-multidigest, with its command line (cloudfoundry/bosh
# lib/bosh/director/digest/multi_digest.rb): `verify-multi-digest FILE DIGEST` exits 0 only when the
# strongest digest in DIGEST ("<sha1>", "sha256:<hex>", several joined by ";") matches FILE;
# `create-multi-digest ALGO FILE` prints the digest as the director stores it.
import hashlib, sys
STRENGTH = {{"sha1": 1, "sha256": 2, "sha512": 3}}
def digest(algo, path):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
cmd = sys.argv[1] if len(sys.argv) > 1 else ""
if cmd == "verify-multi-digest" and len(sys.argv) == 4:
    parts = []
    for d in sys.argv[3].split(";"):
        algo, _, hexd = d.rpartition(":")
        parts.append((algo or "sha1", hexd.lower()))
    algo, want = max(parts, key=lambda p: STRENGTH.get(p[0], 0))
    if algo not in STRENGTH:
        sys.exit(f"unknown algorithm {{algo}}")
    got = digest(algo, sys.argv[2])
    if got != want:
        sys.exit(f"Expected stream to have digest '{{sys.argv[3]}}' but was '{{got}}'")
elif cmd == "create-multi-digest" and len(sys.argv) == 4:
    algo = sys.argv[2]
    value = digest(algo, sys.argv[3])
    sys.stdout.write(value if algo == "sha1" else f"{{algo}}:{{value}}")
else:
    sys.exit("usage: verify-multi-digest FILE DIGEST | create-multi-digest ALGO FILE")
"""

CPI_WRAPPER = """#!/bin/sh
# The director runs a CPI with nothing but PATH and TMPDIR set (cloudfoundry/bosh
# lib/cloud/external_cpi.rb); this is what bin/cpi of the lxd_cpi job does, on this checkout.
exec {python} {root}/bin/boshcpi cpi --config {config}
"""


class FileServer:
    """Releases and stemcells for the director to fetch by URL (loopback only)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: Path) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path.relative_to(self.folder)}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class Director:
    """The director and what it runs on, in `work`. `start()` then `bosh(...)`; `stop()` ends every
    process this started, by PID."""

    def __init__(self, work: Path, cpi_config: Path, mbus_host: str, resize_disk: bool = True) -> None:
        self.work = work
        self.cpi_config = cpi_config
        self.mbus_host = mbus_host
        self.resize_disk = resize_disk
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports = {name: free_port() for name in ("pg", "nats", "api", "front")}
        self.blobstore = work / "blobstore"
        self.files = work / "files"
        self.server: FileServer | None = None
        self.env_file = work / "bosh-config"

    # ---- set-up ------------------------------------------------------------------------------
    def _paths(self) -> None:
        for sub in ("pki", "pg", "log", "run", "tmp", "director", "blobstore", "files", "nginx", "bin", "home"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.blobstore, 0o755)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
               user: str | None = None) -> subprocess.Popen:  # fmt: skip
        if user:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv]
        log = open(self.work / "log" / f"{name}.out", "ab")  # noqa: SIM115 - kept for the process's life
        proc = subprocess.Popen(
            argv, env=env or os.environ.copy(), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.procs[name] = proc
        return proc

    def _wait_port(self, name: str, port: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited ({proc.returncode}):\n{self.log(name)}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"{name} did not listen on {port} within {timeout}s:\n{self.log(name)}")

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.work / "log" / f"{name}.out"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def _postgres(self) -> None:
        pg = _postgres_bin()
        assert pg is not None
        data = self.work / "pg" / "data"
        shutil.chown(self.work / "pg", "postgres", "postgres")
        subprocess.run(
            ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", str(pg / "initdb"), "-D", str(data),
             "-U", "bosh", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
            check=True, capture_output=True,
        )  # fmt: skip
        self._spawn(
            "postgres",
            [str(pg / "postgres"), "-D", str(data), "-p", str(self.ports["pg"]), "-k", str(self.work / "pg"),
             "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200", "-c", "fsync=off"],
            user="postgres",
        )  # fmt: skip
        self._wait_port("postgres", self.ports["pg"])
        deadline = time.monotonic() + 30
        while True:
            proc = subprocess.run(
                [str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(self.ports["pg"]), "-U", "bosh", "bosh"],
                capture_output=True, text=True,
            )  # fmt: skip
            if proc.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"createdb: {proc.stderr}")
            time.sleep(0.5)

    def _nats(self) -> None:
        pki = self.work / "pki"
        conf = self.work / "run" / "nats.conf"
        conf.write_text(
            f"listen: 0.0.0.0:{self.ports['nats']}\n"
            f"pid_file: {self.work / 'run' / 'nats.pid'}\n"
            "tls {\n"
            f'  cert_file: "{pki / "nats.pem"}"\n  key_file: "{pki / "nats.key"}"\n  ca_file: "{pki / "ca.pem"}"\n'
            "  verify: true\n  timeout: 5\n}\n"
        )
        self._spawn("nats", ["nats-server", "-c", str(conf)])
        self._wait_port("nats", self.ports["nats"])

    def config(self) -> dict[str, Any]:
        pki = self.work / "pki"
        return {
            "name": "boshcpi-test-director",
            "uuid": str(uuid.uuid4()),
            "port": self.ports["api"],
            "mbus": f"nats://127.0.0.1:{self.ports['nats']}",
            "dir": str(self.work / "director"),
            "logging": {"level": "debug", "file": str(self.work / "log" / "director.log")},
            "audit_log_path": str(self.work / "log"),
            "db": {
                "adapter": "postgres",
                "host": "127.0.0.1",
                "port": self.ports["pg"],
                "user": "bosh",
                "password": "",
                "database": "bosh",
                "connection_options": {"max_connections": 32, "pool_timeout": 10},
            },
            "nats": {
                "server_ca_path": str(pki / "ca.pem"),
                "client_certificate_path": str(pki / "director.pem"),
                "client_private_key_path": str(pki / "director.key"),
                "client_ca_certificate_path": str(pki / "ca.pem"),
                "client_ca_private_key_path": str(pki / "ca.key"),
            },
            "blobstore": {"provider": "local", "options": {"blobstore_path": str(self.blobstore)}},
            "cloud": {"provider": {"name": "boshcpi", "path": str(self.work / "bin" / "cpi")}, "properties": {}},
            "cpi": {"max_supported_api_version": 2, "preferred_api_version": 2},
            "verify_multidigest_path": str(self.work / "bin" / "verify-multidigest"),
            "user_management": {"provider": "local", "local": {"users": [{"name": "admin", "password": PASSWORD}]}},
            "local_dns": {"enabled": False},
            "config_server": {"enabled": False},
            "record_events": True,
            "generate_vm_passwords": False,
            "remove_dev_tools": False,
            "enable_cpi_resize_disk": self.resize_disk,
            "flush_arp": False,
            "trusted_certs": "",
            "max_threads": 8,
            "agent": {
                "agent_wait_timeout": 300,
                "env": {
                    "bosh": {"blobstores": [{"provider": "local", "options": {"blobstore_path": AGENT_BLOBSTORE}}]}
                },
            },
        }

    def _bundle_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(self.work / "home"),
            "BUNDLE_GEMFILE": str(SOURCE / "Gemfile"),
            "TMPDIR": str(self.work / "tmp"),
            "LANG": "C.UTF-8",
        }

    def _director(self) -> None:
        cfg = self.work / "run" / "director.yml"
        cfg.write_text(yaml.safe_dump(self.config()))
        bindir = SOURCE / "bosh-director" / "bin"
        env = self._bundle_env()
        proc = subprocess.run(
            ["bundle", "exec", str(bindir / "bosh-director-migrate"), "-c", str(cfg)],
            env=env, cwd=SOURCE / "bosh-director", capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, f"migrations failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        self._spawn("api", ["bundle", "exec", str(bindir / "bosh-director"), "-c", str(cfg)], env=env,
                    cwd=SOURCE / "bosh-director")  # fmt: skip
        for i in (1, 2, 3):
            self._spawn(f"worker-{i}", ["bundle", "exec", str(bindir / "bosh-director-worker"), "-c", str(cfg),
                                        "-i", str(i)], env={**env, "QUEUES": "normal,urgent"},
                        cwd=SOURCE / "bosh-director")  # fmt: skip
        self._wait_port("api", self.ports["api"], timeout=180)

    def _nginx(self) -> None:
        n, pki = self.work / "nginx", self.work / "pki"
        conf = n / "nginx.conf"
        conf.write_text(
            f"""user root;
daemon off;
worker_processes 1;
pid {n / "nginx.pid"};
error_log {self.work / "log" / "nginx-error.log"} info;
events {{ worker_connections 256; }}
http {{
  access_log {self.work / "log" / "nginx-access.log"};
  client_body_temp_path {n / "body"};
  proxy_temp_path {n / "proxy"};
  fastcgi_temp_path {n / "fastcgi"};
  uwsgi_temp_path {n / "uwsgi"};
  scgi_temp_path {n / "scgi"};
  client_max_body_size 10000m;
  proxy_read_timeout 900;
  proxy_send_timeout 900;
  proxy_buffering off;
  server {{
    listen 127.0.0.1:{self.ports["front"]} ssl;
    ssl_certificate {pki / "web.pem"};
    ssl_certificate_key {pki / "web.key"};
    location / {{
      proxy_pass http://127.0.0.1:{self.ports["api"]};
      proxy_set_header Host $http_host;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
    # GET /resources/<id> answers with X-Accel-Redirect (resources_controller.rb).
    location /x_accel_files/ {{
      internal;
      alias /;
    }}
  }}
}}
"""
        )
        self._spawn("nginx", ["nginx", "-p", str(n), "-c", str(conf)])
        self._wait_port("nginx", self.ports["front"])

    def start(self) -> None:
        self._paths()
        make_pki(self.work / "pki")
        bindir = self.work / "bin"
        (bindir / "verify-multidigest").write_text(VERIFY_MULTIDIGEST.format(python=sys.executable))
        (bindir / "cpi").write_text(CPI_WRAPPER.format(python=sys.executable, root=ROOT, config=self.cpi_config))
        for f in ("verify-multidigest", "cpi"):
            os.chmod(bindir / f, 0o755)
        self.server = FileServer(self.files)
        try:
            self._postgres()
            self._nats()
            self._director()
            self._nginx()
            self.bosh("log-in")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Every process this started, by its PID (its own process group: puma and the workers' children
        go with it): SIGTERM, then SIGKILL after a grace period."""
        for _name, proc in reversed(list(self.procs.items())):
            if proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        if self.server is not None:
            self.server.stop()

    # ---- the CLI -----------------------------------------------------------------------------
    def cli_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.work / "home"),
            "BOSH_CONFIG": str(self.env_file),
            "BOSH_ENVIRONMENT": f"https://127.0.0.1:{self.ports['front']}",
            "BOSH_CA_CERT": str(self.work / "pki" / "ca.pem"),
            "BOSH_CLIENT": "admin",
            "BOSH_CLIENT_SECRET": PASSWORD,
            "BOSH_NON_INTERACTIVE": "true",
        }

    def bosh(self, *args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
        from tests.boshcli import cli

        proc = subprocess.run([str(cli()), *args], env=self.cli_env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"bosh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def bosh_json(self, *args: str) -> list[dict[str, Any]]:
        """The rows of the first table of `bosh --json ...`."""
        doc = json.loads(self.bosh("--json", *args).stdout)
        tables = doc.get("Tables") or []
        return tables[0].get("Rows") or [] if tables else []

    def offer(self, path: Path) -> str:
        """A URL the director can fetch `path` from."""
        target = self.files / path.name
        if not target.exists():
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
        assert self.server is not None
        return self.server.url(target)

    # ---- what the director asked of the CPI -------------------------------------------------
    def task_ids(self) -> list[int]:
        rows = self.bosh_json("tasks", "--recent=1000", "--all")
        return sorted(int(r["id"]) for r in rows)

    def cpi_calls(self, task_id: int) -> list[dict[str, Any]]:
        """Every CPI request of a task and its response, from the task's debug log (the director's
        ExternalCpi logs `request: ... with command: ...` and `response: ...`)."""
        # A failed task answers its log all the same, with a non-zero exit.
        out = self.bosh("task", str(task_id), "--debug", timeout=300, check=False).stdout
        calls: dict[str, dict[str, Any]] = {}
        for line in out.splitlines():
            m = _LOGGED.search(line)
            if not m:
                continue
            tag, what, rest = m.groups()
            doc = _json_prefix(rest)
            if what == "request":
                calls[tag] = {"method": doc.get("method"), "request": doc, "response": None}
            elif tag in calls:
                calls[tag]["response"] = doc
        return list(calls.values())


# cloudfoundry/bosh lib/cloud/external_cpi.rb: a TaggedLogger per call, `[cpi-<n>] request: <json>
# with command: ...` and `[cpi-<n>] response: <json>, err: ...`.
_LOGGED = re.compile(r"\[(cpi-\d+)\] (request|response): (\{.*)")


def _json_prefix(text: str) -> dict[str, Any]:
    """The JSON object at the start of `text` (the log line goes on after it)."""
    doc, _ = json.JSONDecoder().raw_decode(text)
    return doc
