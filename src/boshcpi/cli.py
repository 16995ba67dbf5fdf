"""`boshcpi` subcommands. Each imports its module only when it runs: the CPI starts once per call.

boshcpi cpi --config PATH        one request on stdin, one response on stdout
boshcpi throttle --config PATH   lease server
boshcpi cleanup --config PATH [--apply] [--older-than 1h] [--json]
boshcpi doctor --config PATH     preflight checks
boshcpi init --config PATH       idempotent host set-up
boshcpi demo [--driver lxd|incus|libvirt]   a director-like lifecycle on this host
boshcpi check-config --config PATH          load a config, print the effective values
"""

from __future__ import annotations

import os
import sys

USAGE = __doc__ or ""
MAX_REQUEST = 16 << 20  # a director's biggest request (create_vm with its env) is a few hundred KiB


def _option(argv: list[str], name: str) -> str | None:
    """Minimal `--name VALUE` / `--name=VALUE` lookup (argparse costs ~10 ms of import)."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def run_cpi(argv: list[str]) -> int:
    from boshcpi import log
    from boshcpi.protocol import BoshError, CloudError, failure, success

    config_path = _option(argv, "--config") or os.environ.get("BOSHCPI_CONFIG")
    try:
        raw = sys.stdin.buffer.read(MAX_REQUEST + 1)
    except OSError as e:
        raw = b""
        log.warn(f"cannot read stdin: {e}")
    try:
        if len(raw) > MAX_REQUEST:
            from boshcpi.protocol import CpiError

            raise CpiError(f"the request is larger than {MAX_REQUEST >> 20} MiB; no director sends that")
        out = success(_handle(config_path, raw), log.condensed())
    except BoshError as e:
        e.message = log.redact(e.message)
        log.info(f"error {e.error_type}: {e.message}")
        out = failure(e, log.condensed())
    except Exception as e:
        import traceback

        log.warn("unexpected failure:\n" + "".join(traceback.format_exception(e)).rstrip())
        err = CloudError(log.redact(f"{type(e).__name__}: {e}"))
        out = failure(err, log.condensed())
    try:
        sys.stdout.write(out + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the caller went away; nothing left to tell it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def _handle(config_path: str | None, raw: bytes):
    from boshcpi import config as cfgmod
    from boshcpi import log
    from boshcpi.dispatch import dispatch
    from boshcpi.protocol import parse_request

    request = parse_request(raw)
    cfg = cfgmod.with_context(cfgmod.load(config_path), request.context)
    log.set_verbose(cfg.debug)
    for secret in cfgmod.secrets_of(cfg):
        log.add_secret(secret)
    env = request.arguments[5] if request.method == "create_vm" and len(request.arguments) > 5 else None
    for secret in cfgmod.nested_secrets(env):
        log.add_secret(secret)
    log.debug(f"{request.method} api_version={request.api_version} request_id={request.context.get('request_id', '')}")

    def factory():
        from boshcpi.drivers import make_cloud

        return make_cloud(cfg, request)

    lease = None
    if cfg.throttle_config.enabled:
        from boshcpi.throttle.client import lease_for

        lease = lease_for(cfg)
    return dispatch(factory, request, lease)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE.strip() + "\n")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "cpi":
        return run_cpi(rest)
    if command == "throttle":
        from boshcpi.throttle.server import main as throttle_main

        return throttle_main(rest)
    if command == "cleanup":
        from boshcpi.cleanup import main as cleanup_main

        return cleanup_main(rest)
    if command == "doctor":
        from boshcpi.doctor import main as doctor_main

        return doctor_main(rest)
    if command == "init":
        from boshcpi.hostinit import main as init_main

        return init_main(rest)
    if command == "demo":
        from boshcpi.dev.demo import main as demo_main

        return demo_main(rest)
    if command == "check-config":
        return _check_config(rest)
    sys.stderr.write(f"boshcpi: unknown command {command!r}\n{USAGE.strip()}\n")
    return 2


def _check_config(argv: list[str]) -> int:
    """`boshcpi check-config --config PATH`: load and print the effective configuration."""
    from boshcpi import config as cfgmod
    from boshcpi import fastjson
    from boshcpi.protocol import CpiError

    path = _option(argv, "--config") or os.environ.get("BOSHCPI_CONFIG")
    try:
        cfg = cfgmod.load(path)
    except CpiError as e:
        sys.stderr.write(f"config error: {e.message}\n")
        return 1
    from boshcpi import log

    for secret in cfgmod.secrets_of(cfg):
        log.add_secret(secret)

    def redacted(value):
        if isinstance(value, dict):
            return {k: redacted(v) for k, v in value.items()}
        if isinstance(value, list):
            return [redacted(v) for v in value]
        return log.redact(value) if isinstance(value, str) else value

    data = redacted(cfg.as_dict())
    sys.stdout.write(fastjson.dumps(data, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
