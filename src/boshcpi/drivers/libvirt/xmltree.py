"""The little of ElementTree the libvirt driver needs, on `pyexpat` alone, and XML escaping.

`xml.etree.ElementTree` costs about 13 ms of imports a call (re, contextlib, ElementPath, ...) and
`xml.sax.saxutils` about 40 ms more (it pulls in urllib.request, http.client and email); the CPI starts
once per call. The driver reads libvirt's own XML (domains, volumes, metadata): elements, attributes,
text, child paths. Names carry their namespace as ElementTree writes them, `{uri}name`.
"""

from __future__ import annotations

import pyexpat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator


class Element:
    __slots__ = ("attrib", "children", "tag", "text")

    def __init__(self, tag: str, attrib: dict[str, str]) -> None:
        self.tag = tag
        self.attrib = attrib
        self.text: str | None = None
        self.children: list[Element] = []

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.attrib.get(key, default)

    def __iter__(self) -> Iterator[Element]:
        return iter(self.children)

    def __len__(self) -> int:
        return len(self.children)

    def iter(self, tag: str | None = None) -> Iterator[Element]:
        """This element and every descendant, in document order (those named `tag`, if given)."""
        if tag is None or self.tag == tag:
            yield self
        for child in self.children:
            yield from child.iter(tag)

    def findall(self, path: str) -> list[Element]:
        """Descendants along a `a/b/c` path of child names."""
        found = [self]
        for step in path.split("/"):
            found = [c for e in found for c in e.children if c.tag == step]
        return found

    def find(self, path: str) -> Element | None:
        found = self.findall(path)
        return found[0] if found else None


def _name(raw: str) -> str:
    uri, sep, local = raw.rpartition("\x1f")
    return "{" + uri + "}" + local if sep else raw


def fromstring(text: str | bytes) -> Element:
    """Parse an XML document; ValueError for one that is not well-formed."""
    parser = pyexpat.ParserCreate(namespace_separator="\x1f")
    stack: list[Element] = []
    root: list[Element] = []
    texts: list[list[str]] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        el = Element(_name(name), {_name(k): v for k, v in attrs.items()})
        if stack:
            stack[-1].children.append(el)
        else:
            root.append(el)
        stack.append(el)
        texts.append([])

    def end(_: str) -> None:
        el = stack.pop()
        pieces = texts.pop()
        # The text before the first child, as ElementTree's `text`.
        el.text = "".join(pieces) if pieces else None

    def chars(data: str) -> None:
        if stack and not stack[-1].children:
            texts[-1].append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(text, True)
    except pyexpat.ExpatError as e:
        raise ValueError(f"not well-formed XML: {e}") from None
    return root[0]


# Characters XML 1.0 does not allow at all, not even as character references (section 2.2, Char):
# the C0 controls but tab, newline and carriage return, the surrogates, U+FFFE and U+FFFF. libxml2
# refuses a whole document with one of them; each becomes U+FFFD, the replacement character.
_BAD_RANGES = ((0x00, 0x09), (0x0B, 0x0D), (0x0E, 0x20), (0xD800, 0xE000), (0xFFFE, 0x10000))


def _fit(text: str) -> str:
    if text.isascii() and (text.isprintable() or not any(ord(c) < 0x20 and c not in "\t\n\r" for c in text)):
        return text
    return "".join("\ufffd" if any(lo <= ord(c) < hi for lo, hi in _BAD_RANGES) else c for c in text)


# What a parser would normalise away and must therefore be written as a reference to read back as
# written: a CR in content (end-of-line handling, section 2.11), and tab, newline and CR in an
# attribute value (attribute-value normalisation, section 3.3.3).
_CONTENT = {ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;", ord("\r"): "&#13;"}
_ATTRIBUTE = {**_CONTENT, ord('"'): "&quot;", ord("\n"): "&#10;", ord("\t"): "&#9;"}


def escape(text: str) -> str:
    """Text for an element's content, read back as written (characters XML cannot hold: U+FFFD)."""
    return _fit(text).translate(_CONTENT)


def quoteattr(text: str) -> str:
    """An attribute value with its quotes, read back as written (characters XML cannot hold: U+FFFD)."""
    return '"' + _fit(text).translate(_ATTRIBUTE) + '"'
