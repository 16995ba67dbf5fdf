"""The `deb-src` entry `make release` needs for Debian's CPython source, read off the machine's own apt
sources and written to a private list (scripts/release.sh): the machine's sources are never changed.

Why not add a line to /etc/apt: a one-line `deb-src URI bookworm main` without `signed-by` beside a
deb822 source for the same URI and suite that carries `Signed-By` breaks every apt-get on the machine
("Conflicting values set for option Signed-By ... The list of sources could not be read").

Usage: aptsource.py [APT_ETC]   prints the entry (deb822 stanza) for bookworm main, or exits 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

SUITE = "bookworm"


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    """Stanzas of a .sources file: fields, with continuation lines (an inline Signed-By key) kept."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
            continue
        if raw[0] in " \t" and key:
            current[key] += "\n" + raw
            continue
        key, _, value = raw.partition(":")
        key = key.strip().lower()
        current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def _one_line(line: str) -> tuple[str, str, str, list[str], dict[str, str]] | None:
    """(type, uri, suite, components, options) of a one-line entry."""
    parts = line.split("#", 1)[0].split()
    if len(parts) < 3 or parts[0] not in ("deb", "deb-src"):
        return None
    options: dict[str, str] = {}
    rest = parts[1:]
    if rest[0].startswith("["):
        opts: list[str] = []
        while rest:
            word = rest.pop(0)
            opts.append(word)
            if word.endswith("]"):
                break
        for item in " ".join(opts).strip("[]").split():
            k, _, v = item.partition("=")
            options[k.lower()] = v
    if len(rest) < 2:
        return None
    return parts[0], rest[0], rest[1], rest[2:], options


def find(apt_etc: Path) -> dict[str, str] | None:
    """URI and Signed-By (a keyring path or an inline key, or "") of the machine's Debian source for
    bookworm main: deb822 files first (Debian 12's default), then one-line lists."""
    for path in sorted((apt_etc / "sources.list.d").glob("*.sources")):
        for st in _deb822_stanzas(path.read_text(errors="replace")):
            if st.get("enabled", "yes").lower() == "no":
                continue
            if SUITE in st.get("suites", "").split() and "main" in st.get("components", "").split():
                uris = st.get("uris", "").split()
                if uris:
                    return {"uri": uris[0], "signed_by": st.get("signed-by", "")}
    lists = [apt_etc / "sources.list", *sorted((apt_etc / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            entry = _one_line(line)
            if entry and entry[2] == SUITE and "main" in entry[3]:
                return {"uri": entry[1], "signed_by": entry[4].get("signed-by", "")}
    return None


def entry(apt_etc: Path) -> str | None:
    """The private deb-src stanza, with the same Signed-By as the machine's own source."""
    src = find(apt_etc)
    if src is None:
        return None
    lines = ["Types: deb-src", f"URIs: {src['uri']}", f"Suites: {SUITE}", "Components: main"]
    if src["signed_by"]:
        lines.append(f"Signed-By: {src['signed_by']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = entry(Path(sys.argv[1] if len(sys.argv) > 1 else "/etc/apt"))
    if text is None:
        sys.exit(1)
    sys.stdout.write(text)
