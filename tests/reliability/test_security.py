"""TLS: an HTTPS server whose certificate is not trusted is refused unless insecure_skip_verify (or
its certificate is pinned); the client key and credentials never appear in any output."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from boshcpi.drivers.lxd.hostinit import generate_cert
from tests.helpers import BOSHCPI, ROOT, SECRETS, call

pytestmark = pytest.mark.lxd

GHOST_VM = "vm-00000000-0000-4000-8000-000000000000"
HTTPS = "https://127.0.0.1:8443"


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory):
    crt, key = generate_cert(str(tmp_path_factory.mktemp("tls") / "c"), name="boshcpi-sec-test")
    key_text = Path(key).read_text()
    SECRETS.update(line for line in key_text.splitlines() if not line.startswith("-----"))
    return Path(crt).read_text(), key_text


def write(tmp_path: Path, **server) -> Path:
    path = tmp_path / "cpi.json"
    path.write_text(
        json.dumps(
            {
                "server": {"url": HTTPS, "network_name": "boshcpi-lxdbr0", **server},
                "agent": {"mbus": "nats://n:mbus-s3cret-pw@10.245.0.11:4222"},
            }
        )
    )
    return path


def test_untrusted_server_certificate_is_refused(tmp_path, client_cert):
    crt, key = client_cert
    resp = call(write(tmp_path, tls_client_cert=crt, tls_client_key=key), "has_vm", GHOST_VM)
    assert resp.error_type == "Bosh::Clouds::CloudError"
    # Exactly a verification failure (a refused connection would not say this), and not worth a retry.
    assert "CERTIFICATE_VERIFY_FAILED" in resp.error["message"]
    assert resp.error["ok_to_retry"] is False


def test_insecure_skip_verify_or_a_pinned_certificate_connects(tmp_path, client_cert):
    crt, key = client_cert
    for extra in (
        {"insecure_skip_verify": True},
        {
            "tls_server_cert": json.loads(
                subprocess.run(["lxc", "query", "/1.0"], capture_output=True, text=True).stdout
            )["environment"]["certificate"]
        },
    ):
        resp = call(write(tmp_path, tls_client_cert=crt, tls_client_key=key, **extra), "has_vm", GHOST_VM)
        # TLS works: the request reaches LXD, which refuses the (untrusted) client certificate itself
        # with 403; the operator is told how to trust it. No certificate-verification error.
        assert resp.error is not None and "not authorized" in resp.error["message"], resp.error
        assert "lxc config trust add" in resp.error["message"]
        assert "certificate verify failed" not in resp.error["message"].lower()
        assert "CERTIFICATE_VERIFY_FAILED" not in resp.error["message"]


def test_secrets_never_reach_output(tmp_path, client_cert, lxd):
    crt, key = client_cert
    # A failing call with every kind of secret in play: config key, mbus, env passwords.
    path = write(tmp_path, tls_client_cert=crt, tls_client_key=key, insecure_skip_verify=True)
    resp = call(
        path,
        "create_vm",
        "a",
        "img-x",
        {},
        {},
        [],
        {"bosh": {"password": "env-s3cret-pw", "mbus": {"cert": {"private_key": key}}}},
    )
    text = resp.stdout + resp.stderr
    assert "env-s3cret-pw" not in text and "mbus-s3cret-pw" not in text
    for line in key.splitlines()[1:-1]:
        assert line not in text
    # check-config shows the config with secrets redacted.
    out = subprocess.run([*BOSHCPI, "check-config", "--config", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert "<redacted>" in out.stdout and "mbus-s3cret-pw" not in out.stdout and key.splitlines()[1] not in out.stdout
