"""Password hashing (argon2id) and the users file (``user:hash[:role]`` per line).

One check costs about 64 MiB of memory and tens of milliseconds of CPU (the library's
default parameters, RFC 9106's low-memory profile); the Authenticator runs at most
``max_concurrent`` of them at once, off the event loop.
"""

from __future__ import annotations

import grp
import os
import stat
import tempfile
from collections.abc import Collection
from pathlib import Path

import argon2

from pi_mqtt_gpio.server.config import UserConfig

__all__ = [
    "ARGON2_MEMORY_KIB",
    "DUMMY_HASH",
    "MAX_PASSWORD_BYTES",
    "UnknownRoleError",
    "hash_password",
    "read_users_file",
    "replace_keeping_owner",
    "users_file_roles",
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


class UnknownRoleError(ValueError):
    """``passwd --role`` names a role that is neither built in nor defined."""


def users_file_roles(path: str | Path) -> set[str]:
    """The roles the users in ``path`` hold (empty when there is no file)."""
    file = Path(path)
    if not file.exists():
        return set()
    return {user.role for user in read_users_file(file).values()}


def write_users_file(path: str | Path, user: str, password_hash: str,
                     role: str | None = None, roles: Collection[str] | None = None) -> str:
    """Add or replace ``user`` in a users file; returns the role written. Without ``role`` a
    user already in the file keeps theirs and a new one is a viewer; with ``roles`` a role
    that is not one of them is refused (``UnknownRoleError``) and the file is left as it
    was. The file is replaced atomically and keeps its owner, group and mode; a new file is
    0640, in the group ``gatekeeper`` when run as root and that group exists."""
    if not user or any(c in user for c in ":\n\r#") or user != user.strip():
        raise ValueError("user names may not contain ':', '#', line breaks or outer spaces")
    file = Path(os.path.realpath(path))  # a symlinked users file: its target is updated
    existing = read_users_file(file) if file.exists() else {}
    if role is None:
        role = existing[user].role if user in existing else "viewer"
    if roles is not None and role not in roles:
        raise UnknownRoleError(f"{role!r} is not a role (roles: {', '.join(sorted(roles))}); "
                               f"{path} was not changed")
    lines = file.read_text(encoding="utf-8").splitlines() if file.exists() else []
    entry = f"{user}:{password_hash}:{role}"
    out, replaced = [], False
    for line in lines:
        if line.split(":", 1)[0].strip() == user and not line.lstrip().startswith("#"):
            if not replaced:
                out.append(entry)
            replaced = True
        else:
            out.append(line)
    if not replaced:
        out.append(entry)
    replace_keeping_owner(file, ("\n".join(out) + "\n").encode("utf-8"), new_mode=0o640,
                          new_group=SERVICE_GROUP)
    return role


SERVICE_GROUP = "gatekeeper"  # the installer's system user and group


def replace_keeping_owner(file: Path, data: bytes, *, new_mode: int,
                          new_group: str | None = None) -> None:
    """Replace ``file`` atomically with ``data``: a temporary file in the same directory
    (created exclusively, 0600) is given the old file's mode, owner and group (a new file:
    ``new_mode``, and ``new_group`` when run as root and the group exists), written,
    fsync'ed and renamed over the old one; the directory is fsync'ed. Raises OSError (the
    old file untouched) when its owner or group cannot be kept."""
    try:
        old: os.stat_result | None = os.stat(file)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.")
    try:
        if old is not None:
            if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(fd, old.st_uid, old.st_gid)
                except PermissionError:
                    raise PermissionError(
                        f"{file}: cannot keep its owner and group "
                        f"({old.st_uid}:{old.st_gid}); run this as root (sudo)") from None
            os.fchmod(fd, stat.S_IMODE(old.st_mode))
        else:
            if new_group is not None and os.geteuid() == 0:
                try:
                    os.fchown(fd, -1, grp.getgrnam(new_group).gr_gid)
                except KeyError:
                    pass
            os.fchmod(fd, new_mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, file)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(file.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
