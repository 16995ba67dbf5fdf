"""The package's import rules, read from the modules' own imports (ast, not a running import):

- the core (protocol, dispatch, cloud, config, records, agent settings, stemcell readers, throttle,
  and the driver-neutral commands) never imports a driver's module; only `boshcpi.drivers` (the
  registry) may, lazily;
- a driver never imports another driver;
- within the LXD driver nothing imports another module's underscored names, and no two modules
  import each other;
- nothing the CPI runs imports `boshcpi.dev` (development and demo code);
- and `info`/`has_vm` load no more of boshcpi than they must (measured with -X importtime).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

SRC = ROOT / "src" / "boshcpi"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every `import x` / `from x import names` anywhere in the file."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            names = [a.name for a in node.names]
            out.append((base, names))
            # `from boshcpi.drivers.lxd import disks` imports the module boshcpi.drivers.lxd.disks.
            out += [(f"{base}.{n}", []) for n in names]
    return out


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}
DRIVERS = ("boshcpi.drivers.lxd", "boshcpi.drivers.libvirt")


def driver_of(name: str) -> str | None:
    return next((d for d in DRIVERS if name == d or name.startswith(d + ".")), None)


def real_imports(mod: str) -> set[str]:
    return {m for m, _ in imports_of(MODULES[mod]) if m in MODULES}


def test_the_core_imports_no_driver():
    core = [m for m in MODULES if not m.startswith(("boshcpi.drivers", "boshcpi.dev"))]
    assert "boshcpi.dispatch" in core and "boshcpi.cleanup" in core and "boshcpi.doctor" in core
    offenders = {m: sorted(i for i in real_imports(m) if driver_of(i)) for m in core}
    assert {m: v for m, v in offenders.items() if v} == {}


def test_drivers_never_import_each_other():
    for mod in MODULES:
        mine = driver_of(mod)
        if mine is None:
            continue
        others = {i for i in real_imports(mod) if driver_of(i) not in (None, mine)}
        assert others == set(), f"{mod} imports {others}"


def test_nothing_the_cpi_runs_imports_dev_code():
    for mod in MODULES:
        if mod.startswith("boshcpi.dev"):
            continue
        dev = {i for i in real_imports(mod) if i.startswith("boshcpi.dev")}
        assert dev == set() or (mod == "boshcpi.cli" and dev == {"boshcpi.dev.demo"}), f"{mod} imports {dev}"


def test_the_cli_reaches_dev_code_only_for_the_demo_command():
    source = (SRC / "cli.py").read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("boshcpi.dev"):
            # Inside `if command == "demo":` only.
            assert "demo" in ast.get_source_segment(source, node)


@pytest.mark.parametrize("driver", ["lxd", "libvirt"])
def test_driver_modules_import_one_way_and_no_privates(driver):
    pkg = f"boshcpi.drivers.{driver}"
    mods = [m for m in MODULES if m.startswith(pkg + ".")]
    graph = {m: {i for i in real_imports(m) if i.startswith(pkg + ".")} for m in mods}
    for a, deps in graph.items():
        for b in deps:
            assert a not in graph.get(b, set()), f"{a} and {b} import each other"
        for m, names in imports_of(MODULES[a]):
            if m.startswith(pkg + "."):
                private = [n for n in names if n.startswith("_")]
                assert private == [], f"{a} imports private {private} from {m}"

    # And no cycle of any length.
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph.get(m, ()):
            assert state.get(d) != 1, f"import cycle: {' -> '.join([*path, d])}"
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


# The rooms every driver has, under the same names (its wire client is its own: lxd `client`,
# libvirt `rpc`/`xdr`/`remote`). A third driver copies this shape.
DRIVER_ROOMS = (
    "host", "naming", "errors", "locks", "cloud", "vmfacts", "vmplan", "vmapply",
    "disks", "images", "cleanup", "doctor", "hostinit",
)  # fmt: skip
MAX_MODULE_LINES = 460  # about 450: a module holds one thing


@pytest.mark.parametrize("driver", ["lxd", "libvirt"])
def test_every_driver_has_the_same_rooms(driver):
    have = {p.stem for p in (SRC / "drivers" / driver).glob("*.py")}
    assert set(DRIVER_ROOMS) <= have, sorted(set(DRIVER_ROOMS) - have)


def test_no_module_is_bigger_than_one_thing():
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    assert {m: n for m, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_the_release_package_does_not_ship_dev_code():
    spec = (ROOT / "packages" / "boshcpi" / "spec").read_text()
    assert "excluded_files" in spec and "boshcpi/dev/**" in spec


def _loaded(method: str, config: Path) -> set[str]:
    args = [] if method == "info" else ["vm-00000000-0000-4000-8000-000000000000"]
    request = json.dumps({"method": method, "arguments": args, "context": {}})
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "boshcpi.cli", "cpi", "--config", str(config)],
        input=request.encode(),
        capture_output=True,
        cwd=ROOT,
        check=True,
    )
    names = set()
    for line in proc.stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return {n for n in names if n.startswith("boshcpi")}


def test_info_and_has_vm_load_only_what_they_need(tmp_path):
    config = tmp_path / "cpi.json"
    config.write_text('{"server": {"url": "unix:///nonexistent/unix.socket"}}')
    info = _loaded("info", config)
    assert info == {
        "boshcpi",
        "boshcpi.log",
        "boshcpi.protocol",
        "boshcpi.fastjson",
        "boshcpi.config",
        "boshcpi.record",
        "boshcpi.dispatch",
        "boshcpi.drivers",
        "boshcpi.drivers.lxd",  # its __init__: the driver's stemcell formats, nothing else
        "boshcpi.cloud",
    }
    has_vm = _loaded("has_vm", config) - info
    assert has_vm == {
        "boshcpi.ids",
        "boshcpi.drivers.lxd.cloud",
        "boshcpi.drivers.lxd.naming",
        "boshcpi.drivers.lxd.host",
        "boshcpi.drivers.lxd.client",
        "boshcpi.drivers.lxd.errors",
        "boshcpi.transport",  # sockets and TLS, shared by both drivers
    }
    # Before the driver was split into folders: 9 modules for info, 17 for has_vm.
    assert len(info) <= 10 and len(info | has_vm) <= 17
