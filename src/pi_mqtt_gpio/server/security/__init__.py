"""Security of the gatekeeper: who may connect (``auth``, ``throttle``, ``passwords``), what
they may read and write (``acl``), and who may drive a device right now (``leases``)."""

from pi_mqtt_gpio.server.security.acl import AccessControl, builtin_roles
from pi_mqtt_gpio.server.security.auth import Authenticator
from pi_mqtt_gpio.server.security.leases import ControlLeaseManager, Lease
from pi_mqtt_gpio.server.security.passwords import (
    hash_password,
    read_users_file,
    verify_password,
    write_users_file,
)
from pi_mqtt_gpio.server.security.throttle import LoginThrottle

__all__ = [
    "AccessControl",
    "Authenticator",
    "ControlLeaseManager",
    "Lease",
    "LoginThrottle",
    "builtin_roles",
    "hash_password",
    "read_users_file",
    "verify_password",
    "write_users_file",
]
