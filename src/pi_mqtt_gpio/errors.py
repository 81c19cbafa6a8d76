"""Error codes and the exception tree shared by the server and the client stub.

A refused call is answered with ``{"ok": false, "error": {"code": CODE, "message": ...}}``;
the client raises the ``GatekeeperError`` subclass named after the code.
"""

from __future__ import annotations

from enum import StrEnum

from pi_mqtt_gpio.payloads import ErrorBody

__all__ = [
    "BadArgument",
    "BadRequest",
    "Busy",
    "ErrorCode",
    "GatekeeperError",
    "HardwareError",
    "Interlocked",
    "LeaseHeld",
    "LeaseRequired",
    "NotAuthorized",
    "RateLimited",
    "RequestTimeout",
    "SafetyLockout",
    "UnknownDevice",
    "UnknownMethod",
    "error_for",
]


class ErrorCode(StrEnum):
    BAD_REQUEST = "BAD_REQUEST"
    UNKNOWN_DEVICE = "UNKNOWN_DEVICE"
    UNKNOWN_METHOD = "UNKNOWN_METHOD"
    BAD_ARGUMENT = "BAD_ARGUMENT"
    NOT_AUTHORIZED = "NOT_AUTHORIZED"
    LEASE_REQUIRED = "LEASE_REQUIRED"
    LEASE_HELD = "LEASE_HELD"
    SAFETY_LOCKOUT = "SAFETY_LOCKOUT"
    RATE_LIMITED = "RATE_LIMITED"
    INTERLOCKED = "INTERLOCKED"
    HARDWARE_ERROR = "HARDWARE_ERROR"
    BUSY = "BUSY"
    TIMEOUT = "TIMEOUT"


class GatekeeperError(Exception):
    """A call the gatekeeper refused or could not complete."""

    code: ErrorCode = ErrorCode.BAD_REQUEST

    def __init__(self, message: str = "", *, details: dict[str, object] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message or self.code.value)
        self.details = details or {}
        self.retry_after = retry_after  # seconds until the same call may succeed (safety)

    @property
    def message(self) -> str:
        return str(self.args[0])

    def to_json(self) -> ErrorBody:
        out: ErrorBody = {"code": self.code.value, "message": self.message}
        if self.details:
            out["details"] = self.details
        if self.retry_after is not None:
            out["retry_after"] = round(self.retry_after, 3)
        return out


class BadRequest(GatekeeperError):
    code = ErrorCode.BAD_REQUEST


class UnknownDevice(GatekeeperError):
    code = ErrorCode.UNKNOWN_DEVICE


class UnknownMethod(GatekeeperError):
    code = ErrorCode.UNKNOWN_METHOD


class BadArgument(GatekeeperError):
    code = ErrorCode.BAD_ARGUMENT


class NotAuthorized(GatekeeperError):
    code = ErrorCode.NOT_AUTHORIZED


class LeaseRequired(GatekeeperError):
    code = ErrorCode.LEASE_REQUIRED


class LeaseHeld(GatekeeperError):
    code = ErrorCode.LEASE_HELD


class SafetyLockout(GatekeeperError):
    code = ErrorCode.SAFETY_LOCKOUT


class RateLimited(GatekeeperError):
    code = ErrorCode.RATE_LIMITED


class Interlocked(GatekeeperError):
    code = ErrorCode.INTERLOCKED


class HardwareError(GatekeeperError):
    code = ErrorCode.HARDWARE_ERROR


class Busy(GatekeeperError):
    code = ErrorCode.BUSY


class RequestTimeout(GatekeeperError):
    """No reply within the timeout (``TIMEOUT``); named so it does not shadow ``TimeoutError``."""

    code = ErrorCode.TIMEOUT


_BY_CODE: dict[str, type[GatekeeperError]] = {
    cls.code.value: cls
    for cls in (BadRequest, UnknownDevice, UnknownMethod, BadArgument, NotAuthorized,
                LeaseRequired, LeaseHeld, SafetyLockout, RateLimited, Interlocked,
                HardwareError, Busy, RequestTimeout)
}


def error_for(code: str, message: str = "", details: dict[str, object] | None = None,
              retry_after: float | None = None) -> GatekeeperError:
    """The exception for an error reply (unknown codes become ``GatekeeperError``)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return GatekeeperError(message or code, details=details, retry_after=retry_after)
    return cls(message, details=details, retry_after=retry_after)
