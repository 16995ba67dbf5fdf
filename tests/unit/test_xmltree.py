"""xmltree (the libvirt driver's ElementTree stand-in on pyexpat) reads libvirt's XML as ElementTree does."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from boshcpi.drivers.libvirt import xmltree

DOMAIN = """<domain type='qemu' id='3'>
  <name>vm-00000000-0000-4000-8000-000000000001</name>
  <metadata>
    <boshcpi:bosh xmlns:boshcpi="https://github.com/boshcpi/boshcpi/1"><created_by>boshcpi</created_by>
      <tag name="job &amp; index">db &lt;0&gt;</tag></boshcpi:bosh>
  </metadata>
  <devices>
    <disk type='file' device='disk'><source file='/p/vm-1.qcow2'/><target dev='vda' bus='virtio'/>
      <serial>virt_p0123456789abcd</serial></disk>
    <disk type='file' device='cdrom'><source file='/p/vol-c-1.iso'/><target dev='sda' bus='scsi'/></disk>
    <interface type='network'><source network='n'/></interface>
  </devices>
</domain>"""


def _shape(el, ours: bool):
    kids = list(el)
    return (el.tag, dict(el.attrib), (el.text or "").strip(), [_shape(k, ours) for k in kids])


def test_the_same_tree_as_elementtree():
    assert _shape(xmltree.fromstring(DOMAIN), True) == _shape(ET.fromstring(DOMAIN), False)


@pytest.mark.parametrize("path", ["devices/disk", "devices/disk/source", "devices/interface/source", "name", "nope/x"])
def test_paths_and_iteration_as_elementtree(path):
    ours, theirs = xmltree.fromstring(DOMAIN), ET.fromstring(DOMAIN)
    assert [e.attrib for e in ours.findall(path)] == [e.attrib for e in theirs.findall(path)]
    assert (ours.find(path) is None) == (theirs.find(path) is None)
    assert [(e.tag, e.get("file")) for e in ours.iter("source")] == [
        (e.tag, e.get("file")) for e in theirs.iter("source")
    ]


def test_not_well_formed_is_a_value_error():
    with pytest.raises(ValueError):
        xmltree.fromstring("<domain><name>x</domain>")


def test_escaping_round_trips():
    text = "a & b < c > d \"quoted\" 'single'\nline"
    doc = f"<t a={xmltree.quoteattr(text)}>{xmltree.escape(text)}</t>"
    el = xmltree.fromstring(doc)
    assert el.get("a") == text and el.text == text


def test_escaped_text_and_attributes_read_back_as_written():
    """XML 1.0: C0 controls (but tab, newline, CR) cannot appear at all, not even as references
    (section 2.2): they become U+FFFD; a parser turns CR and CR LF in content into LF (2.11), and tab,
    newline and CR in an attribute value into spaces (3.3.3): references keep them."""
    value = "a\x01b\tc\rd\r\ne\nf<&>\"'\ud800\ufffe\x7f"
    doc = xmltree.fromstring(f"<r a={xmltree.quoteattr(value)}>{xmltree.escape(value)}</r>")
    want = value.replace("\x01", "\ufffd").replace("\ud800", "\ufffd").replace("\ufffe", "\ufffd")
    assert doc.get("a") == want
    assert doc.text == want
    assert xmltree.escape("plain text") == "plain text"
