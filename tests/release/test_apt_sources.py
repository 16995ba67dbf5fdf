"""`make release` takes CPython's source from Debian's source archive without touching the machine's
apt sources: a private deb-src entry with the URI and Signed-By of the machine's own source
(scripts/aptsource.py, scripts/release.sh apt_private). Each layout an operator's machine may have
(deb822 or one-line, with or without a deb-src entry already) is given to the real script, which runs
the real apt-get against the real mirror with it; /etc/apt stays byte for byte as it was, and the
machine's own `apt-get update` still works afterwards."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import aptsource

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def machine_source() -> dict[str, str]:
    src = aptsource.find(Path("/etc/apt"))
    if src is None:
        pytest.skip("not run: this machine has no Debian source for bookworm main in /etc/apt")
    return src


def layouts(uri: str, signed_by: str) -> dict[str, dict[str, str]]:
    sb = f"Signed-By: {signed_by}\n" if signed_by else ""
    opt = f"[signed-by={signed_by}] " if signed_by else ""
    return {
        "deb822": {
            "sources.list.d/debian.sources": f"Types: deb\nURIs: {uri}\nSuites: bookworm\nComponents: main\n{sb}"
        },
        "deb822 with deb-src": {
            "sources.list.d/debian.sources": f"Types: deb deb-src\nURIs: {uri}\nSuites: bookworm bookworm-updates\n"
            f"Components: main\n{sb}"
        },
        "one-line": {"sources.list": f"deb {opt}{uri} bookworm main\n"},
        "one-line with deb-src": {"sources.list": f"deb {opt}{uri} bookworm main\ndeb-src {opt}{uri} bookworm main\n"},
    }


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def test_the_private_entry_follows_the_machine_source(tmp_path):
    """What aptsource.py reads from each layout: the URI, and Signed-By as a path or an inline key."""
    inline = "\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n -----END PGP PUBLIC KEY BLOCK-----"
    cases = {
        **layouts("http://mirror.example/debian", KEYRING),
        "inline key": {
            "sources.list.d/x.sources": "# a comment\nTypes: deb\nURIs: http://mirror.example/debian\n"
            f"Suites: bookworm\nComponents: main contrib\nSigned-By:{inline}\n"
        },
        "disabled first": {
            "sources.list.d/a.sources": "Enabled: no\nTypes: deb\nURIs: http://off.example/\nSuites: bookworm\n"
            "Components: main\n",
            "sources.list.d/b.sources": "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
            "Components: main\n",
        },
    }
    for name, files in cases.items():
        etc = tmp_path / name.replace(" ", "-")
        for rel, text in files.items():
            (etc / rel).parent.mkdir(parents=True, exist_ok=True)
            (etc / rel).write_text(text)
        (etc / "sources.list.d").mkdir(exist_ok=True)
        src = aptsource.find(etc)
        assert src is not None and src["uri"] == "http://mirror.example/debian", (name, src)
        want = inline.strip() if name == "inline key" else ("" if name == "disabled first" else KEYRING)
        assert src["signed_by"].strip() == want, (name, src)
        stanza = aptsource.entry(etc)
        assert stanza is not None and stanza.startswith("Types: deb-src\nURIs: http://mirror.example/debian\n")
    empty = tmp_path / "none"
    (empty / "sources.list.d").mkdir(parents=True)
    assert aptsource.find(empty) is None


@pytest.mark.slow
def test_release_fetches_python_source_and_leaves_apt_as_it_was(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("not run: apt-get update needs root")
    src = machine_source()
    before = tree_digest(Path("/etc/apt"))
    for name, files in layouts(src["uri"], src["signed_by"]).items():
        etc = tmp_path / name.replace(" ", "-") / "etc"
        (etc / "sources.list.d").mkdir(parents=True)
        for rel, text in files.items():
            (etc / rel).write_text(text)
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "release.sh"), "python-source-uris"],
            env={
                **os.environ,
                "BOSHCPI_APT_ETC": str(etc),
                "BOSHCPI_RELEASE_CACHE": str(tmp_path / name / "cache"),
                "PYTHON": sys.executable,
            },
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        assert "python3.11_3.11" in proc.stdout and ".orig.tar." in proc.stdout, (name, proc.stdout[-2000:])
        assert tree_digest(Path("/etc/apt")) == before, f"{name}: /etc/apt changed"
    update = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, timeout=600)
    assert update.returncode == 0 and "Conflicting" not in update.stderr, update.stderr[-2000:]
