"""The CPI wire protocol: request parsing, response envelopes, and the BOSH error hierarchy.

One request arrives on stdin; one response leaves on stdout, always. Every failure is one of the
exceptions below, each bound to the BOSH error type the director acts on.
"""

from __future__ import annotations

from boshcpi import fastjson

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# ---- errors -------------------------------------------------------------------------------


class BoshError(Exception):
    """Base of every error the CPI reports; `error_type` is what the director sees."""

    error_type = "Bosh::Clouds::CloudError"
    default_retry = False

    def __init__(self, message: str, *, ok_to_retry: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.ok_to_retry = self.default_retry if ok_to_retry is None else ok_to_retry


class CpiError(BoshError):
    """The caller's fault: malformed request, bad arguments, broken configuration."""

    error_type = "Bosh::Clouds::CpiError"


class NotImplementedByCpi(BoshError):
    """The method is unknown, or this backend cannot do it; the director may fall back."""

    error_type = "Bosh::Clouds::NotImplemented"


class NotSupported(BoshError):
    """The request is understood but not supported by this configuration."""

    error_type = "Bosh::Clouds::NotSupported"


class CloudError(BoshError):
    """The IaaS failed or refused; the generic failure."""

    error_type = "Bosh::Clouds::CloudError"


class VMNotFound(CloudError):
    """The VM named by a cid does not exist."""

    error_type = "Bosh::Clouds::VMNotFound"


class DiskNotFound(CloudError):
    """The disk named by a cid does not exist."""

    error_type = "Bosh::Clouds::DiskNotFound"


class DiskNotAttached(CloudError):
    """The disk exists but is not attached to the VM named."""

    error_type = "Bosh::Clouds::DiskNotAttached"


class NoDiskSpace(CloudError):
    """The storage pool has no room for the request."""

    error_type = "Bosh::Clouds::NoDiskSpace"


class VMCreationFailed(CloudError):
    """create_vm failed and cleaned up after itself; `ok_to_retry` says whether a retry may work."""

    error_type = "Bosh::Clouds::VMCreationFailed"


class StemcellNotFound(CloudError):
    """The stemcell named by a cid does not exist (reported as a CloudError, the director's type)."""


def type_name(value: Any) -> str:
    """A JSON value's type as error messages name it: 'an object', 'a list', 'null', ..."""
    if value is None:
        return "null"
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)


# ---- requests -----------------------------------------------------------------------------


class Request:
    """One parsed request envelope."""

    __slots__ = ("api_version", "arguments", "context", "method")

    def __init__(
        self, method: str, arguments: list[Any], context: dict[str, Any] | None = None, api_version: int = 1
    ) -> None:
        self.method = method
        self.arguments = arguments
        self.context = context or {}
        self.api_version = api_version

    @property
    def stemcell_api_version(self) -> int:
        vm = self.context.get("vm")
        if isinstance(vm, dict):
            stemcell = vm.get("stemcell")
            if isinstance(stemcell, dict) and isinstance(stemcell.get("api_version"), int):
                return stemcell["api_version"]
        return 1


def parse_request(raw: str | bytes) -> Request:
    """Parse one request envelope; every defect is a CpiError with the director's wording."""
    try:
        payload = fastjson.loads(raw)
    except ValueError:
        raise CpiError("Must provide valid JSON payload") from None
    if not isinstance(payload, dict):
        raise CpiError("Must provide valid JSON payload")
    if "method" not in payload:
        raise CpiError("Must provide 'method' key")
    method = payload["method"]
    if not isinstance(method, str) or not method:
        raise CpiError("Must provide 'method' key as a non-empty string")
    if "arguments" not in payload:
        raise CpiError("Must provide 'arguments' key")
    arguments = payload["arguments"]
    if not isinstance(arguments, list):
        raise CpiError("Must provide 'arguments' key as a list")
    context = payload.get("context")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise CpiError("'context' must be an object")
    version = payload.get("api_version")
    if version is None:
        version = 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CpiError("'api_version' must be a positive integer")
    return Request(method=method, arguments=arguments, context=context, api_version=version)


# ---- responses ----------------------------------------------------------------------------


def success(result: Any, log: str = "") -> str:
    try:
        return fastjson.dumps({"result": result, "error": None, "log": log})
    except (TypeError, ValueError):
        return failure(CpiError("Failed to serialize result"), log)


def failure(error: BoshError, log: str = "") -> str:
    return fastjson.dumps(
        {
            "result": None,
            "error": {
                "type": error.error_type,
                "message": error.message,
                "ok_to_retry": bool(error.ok_to_retry),
            },
            "log": log,
        }
    )


def shape_result(method: str, api_version: int, value: Any) -> Any:
    """Turn a driver's full (v2) result into the shape the request's API version expects."""
    if method == "create_vm":
        vm_cid, networks = value
        return [vm_cid, networks] if api_version >= 2 else vm_cid
    if method == "attach_disk":
        return value if api_version >= 2 else None
    return value
