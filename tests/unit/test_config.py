from __future__ import annotations

import pytest

from boshcpi import config
from boshcpi.protocol import CpiError


def test_defaults_follow_the_anchor():
    cfg = config.from_dict({})
    assert cfg.driver == "lxd"
    assert cfg.server.project_name == "default" and cfg.server.network_name == "lxdbr0"
    assert cfg.server_url == "unix:///var/lib/lxd/unix.socket"
    assert cfg.agent_config.type == "CDROM" and cfg.agent_config.label == "config-2"
    assert cfg.agent_config.userdata_path == "ec2/latest/user-data"
    assert cfg.throttle_config.limit == 4 and cfg.throttle_hold == 120
    assert config.from_dict({"server": {"type": "incus"}}).server_url == "unix:///var/lib/incus/unix.socket"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"serverr": {}}, "serverr: unknown key"),
        ({"server": {"urll": "x"}}, "server.urll: unknown key"),
        ({"server": {"url": "http://x"}}, "server.url: expected https:// or unix:// URL"),
        ({"server": {"type": "docker"}}, "server.type: expected one of lxd, incus"),
        ({"server": {"insecure_skip_verify": "maybe"}}, "server.insecure_skip_verify: expected a boolean"),
        ({"server": []}, "server: expected an object, got a list"),
        ({"agent": {"ntp": "pool.ntp.org"}}, "agent.ntp: expected a list of strings"),
        ({"agent_config": {"type": "NTFS"}}, "agent_config.type: expected one of FAT32, CDROM"),
        ({"throttle_config": {"limit": 0}}, "throttle_config.limit: must be positive"),
        ({"throttle_config": {"hold": "soon"}}, "throttle_config.hold: expected a duration"),
        ({"server": {"tls_client_cert": "x"}}, "must be given together"),
        ({"libvirt": {"domain_type": "xen"}}, "libvirt.domain_type"),
        ({"server": {"instance_config": {"jammy": "csm"}}}, "server.instance_config.jammy"),
    ],
)
def test_bad_values_name_their_key_path(data, message):
    with pytest.raises(CpiError) as err:
        config.from_dict(data)
    assert message in err.value.message


def test_bosh_rendered_strings_are_accepted():
    cfg = config.from_dict(
        {"server": {"insecure_skip_verify": "true"}, "throttle_config": {"limit": "8", "enabled": "false"}}
    )
    assert cfg.server.insecure_skip_verify is True and cfg.throttle_config.limit == 8
    assert cfg.throttle_config.enabled is False


def test_nulls_mean_defaults():
    assert config.from_dict({"server": {"target": None}}).server.target == ""


def test_durations():
    assert config.parse_duration("2m", "x") == 120
    assert config.parse_duration("500ms", "x") == 0.5
    assert config.parse_duration(30, "x") == 30


def test_secrets_are_collected():
    cfg = config.from_dict(
        {
            "agent": {
                "mbus": "nats://user:pa55w0rd@1.2.3.4:4222",
                "blobstore": {"options": {"password": "bl0b", "endpoint": "x"}},
            },
            "server": {"tls_client_cert": "CERT", "tls_client_key": "KEYDATA"},
        }
    )
    secrets = config.secrets_of(cfg)
    assert "pa55w0rd" in secrets and "bl0b" in secrets and "KEYDATA" in secrets
    assert "x" not in secrets


def test_numbers_where_the_go_cpi_spec_shows_them():
    """`operation_timeout: 600`, `hold: 120`, a byte count for `max_stemcell_image` (the Go CPI's spec
    and plain YAML give numbers) mean seconds and bytes, as their string forms do."""
    cfg = config.from_dict(
        {
            "server": {"operation_timeout": 600, "max_stemcell_image": 1 << 30, "create_vm_lock": {"timeout": 90}},
            "throttle_config": {"hold": 120, "limit": "3"},
        }
    )
    assert cfg.operation_timeout == 600.0
    assert cfg.max_stemcell_image == 1 << 30
    assert cfg.throttle_hold == 120.0 and cfg.throttle_config.limit == 3
    assert config.parse_duration(cfg.server.create_vm_lock.timeout, "t") == 90.0
    assert config.from_dict({"server": {"operation_timeout": "10m"}}).operation_timeout == 600.0


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("server", "operation_timeout", -1),
        ("server", "operation_timeout", True),
        ("server", "operation_timeout", [600]),
        ("server", "max_stemcell_image", -5),
        ("server", "max_stemcell_image", 1.5),
        ("throttle_config", "hold", "soon"),
    ],
)
def test_bad_numbers_are_errors_naming_the_key(section, key, value):
    with pytest.raises(CpiError) as e:
        config.from_dict({section: {key: value}})
    assert f"{section}.{key}" in e.value.message
