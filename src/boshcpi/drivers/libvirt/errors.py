"""libvirt's errors as this driver meets them, in one place: what libvirtd answers (a `remote_error`,
`src/remote/remote_protocol.x`), a connection lost or never made, and a message that does not decode.
Each is a `LibvirtError` with libvirt's error number, so the driver's one mapping to BOSH errors
(`LibvirtHost.err`) sees them all; nothing escapes as a bare ValueError."""

from __future__ import annotations

# virErrorNumber (include/libvirt/virterror.h): the codes the driver tells apart
ERR_INTERNAL_ERROR = 1
ERR_NO_SUPPORT = 3
ERR_NO_CONNECT = 5
ERR_OPERATION_FAILED = 9
ERR_SYSTEM_ERROR = 38
ERR_RPC = 39
ERR_NO_DOMAIN = 42
ERR_NO_NETWORK = 43
ERR_AUTH_FAILED = 45
ERR_NO_STORAGE_POOL = 49
ERR_NO_STORAGE_VOL = 50
ERR_OPERATION_INVALID = 55
ERR_NO_DOMAIN_METADATA = 80


class LibvirtError(Exception):
    """libvirtd answered with an error, or could not be reached (`code` ERR_RPC / ERR_NO_CONNECT).
    `permanent`: a certificate or an authentication that a retry will not change."""

    def __init__(self, code: int, message: str, domain: int = 0, permanent: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.domain = domain
        self.message = message
        self.permanent = permanent

    # libvirt-python's names, which the driver's error mapping reads.
    def get_error_code(self) -> int:
        return self.code

    def get_error_message(self) -> str:
        return self.message


class XDRError(LibvirtError):
    """A message that does not decode as the protocol says (broken, or not libvirtd's): an RPC error."""

    def __init__(self, message: str) -> None:
        super().__init__(ERR_RPC, f"libvirtd sent a message that does not decode: {message}")
