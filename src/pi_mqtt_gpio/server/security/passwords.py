"""Password hashing (argon2id) and the users file (``user:hash[:role]`` per line).

One check costs about 64 MiB of memory and tens of milliseconds of CPU (the library's
default parameters, RFC 9106's low-memory profile); the Authenticator runs at most
``max_concurrent`` of them at once, off the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import argon2

from pi_mqtt_gpio.server.config import UserConfig

__all__ = [
    "ARGON2_MEMORY_KIB",
    "DUMMY_HASH",
    "MAX_PASSWORD_BYTES",
    "hash_password",
    "read_users_file",
    "verify_password",
    "write_users_file",
]

_hasher = argon2.PasswordHasher()  # argon2id, library defaults (RFC 9106 low-memory profile)
ARGON2_MEMORY_KIB = _hasher.memory_cost  # what one check allocates (65536 KiB = 64 MiB)
MAX_PASSWORD_BYTES = 1024
# A hash of a random password nobody knows, with the library's default parameters: checked
# for unknown users so they cost as much as known ones. Fixed, so that building the
# Authenticator (on the event loop) does no argon2 work.
DUMMY_HASH = ("$argon2id$v=19$m=65536,t=3,p=4$HipZ56M8vIpiinBNqcrjxw$"
              "KfHetPU1B8JKAAHVJUUwWJ8WpFshOJ75i0OZgxaVSKg")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: bytes) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def read_users_file(path: str | Path, roles: Collection[str] | None = None
                    ) -> dict[str, UserConfig]:
    """``user:hash[:role]`` per line (``#`` comments), as written by ``passwd``. With
    ``roles``, a user whose role is not one of them is an error naming the file and line."""
    users: dict[str, UserConfig] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("$argon2"):
            raise ValueError(f"{path}:{number}: expected user:$argon2id$...[:role]")
        role = parts[2] if len(parts) == 3 else "viewer"
        if roles is not None and role not in roles:
            raise ValueError(f"{path}:{number}: user {parts[0]!r}: {role!r} is not a role "
                             f"(roles: {', '.join(sorted(roles))})")
        users[parts[0]] = UserConfig(password_hash=parts[1], role=role)
    return users


def write_users_file(path: str | Path, user: str, password_hash: str, role: str) -> None:
    """Add or replace ``user`` in a users file (created with mode 0600)."""
    if not user or any(c in user for c in ":\n\r#") or user != user.strip():
        raise ValueError("user names may not contain ':', '#', line breaks or outer spaces")
    file = Path(path)
    lines = file.read_text(encoding="utf-8").splitlines() if file.exists() else []
    entry = f"{user}:{password_hash}:{role}"
    out, replaced = [], False
    for line in lines:
        if line.split(":", 1)[0] == user and not line.startswith("#"):
            out.append(entry)
            replaced = True
        else:
            out.append(line)
    if not replaced:
        out.append(entry)
    tmp = file.with_name(file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    os.replace(tmp, file)
