"""``passwd``: the users file keeps its owner, group and mode (the service must still read it
after ``sudo pi-mqtt-gatekeeper passwd``), a user keeps their role unless ``--role`` is
given, and a role that does not exist is refused with the file left as it was."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pi_mqtt_gpio.server.main import main
from pi_mqtt_gpio.server.security import passwords
from pi_mqtt_gpio.server.security.passwords import read_users_file, verify_password

HASH = "$argon2id$v=19$m=65536,t=3,p=4$abc$def"
OTHER_GID = 65534  # nogroup: not the group of whoever runs the tests


def _passwd(monkeypatch: pytest.MonkeyPatch, *args: str, password: str = "pw") -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
    return main(["passwd", *args, "--password-stdin"])


def _users(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "users"
    path.write_text(text)
    return path


def test_keeps_owner_group_and_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the installer makes (0640, group gatekeeper) stays so after passwd."""
    path = _users(tmp_path, f"bob:{HASH}:viewer\n")
    os.chmod(path, 0o640)
    if os.geteuid() == 0:
        os.chown(path, 0, OTHER_GID)
    before = os.stat(path)
    assert _passwd(monkeypatch, str(path), "alice", "--role", "operator") == 0
    after = os.stat(path)
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert after.st_ino != before.st_ino  # replaced, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users"]  # no temp file left
    assert read_users_file(path)["alice"].role == "operator"


def test_new_file_is_0640_in_the_service_group(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("the group is only set when run as root")
    import grp

    group = grp.getgrgid(OTHER_GID).gr_name
    monkeypatch.setattr(passwords, "SERVICE_GROUP", group)
    path = tmp_path / "users"
    assert passwords.write_users_file(path, "alice", HASH) == "viewer"
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == OTHER_GID


def test_without_role_a_user_keeps_theirs_a_new_one_is_viewer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = _users(tmp_path, f"bob:{HASH}:operator\n")
    assert _passwd(monkeypatch, str(path), "bob", password="new") == 0
    assert "bob (operator) written" in capsys.readouterr().out
    bob = read_users_file(path)["bob"]
    assert bob.role == "operator" and verify_password(bob.password_hash, b"new")
    assert _passwd(monkeypatch, str(path), "carol") == 0
    assert read_users_file(path)["carol"].role == "viewer"
    assert _passwd(monkeypatch, str(path), "bob", "--role", "admin") == 0
    assert read_users_file(path)["bob"].role == "admin"


def test_unknown_role_is_refused_and_the_file_left_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = _users(tmp_path, f"bob:{HASH}:viewer\n")
    before = path.read_bytes()
    assert _passwd(monkeypatch, str(path), "alice", "--role", "operater") == 2
    err = capsys.readouterr().err
    assert "'operater' is not a role" in err and "operator" in err and "not changed" in err
    assert path.read_bytes() == before
    assert not (tmp_path / "new-users").exists()
    assert _passwd(monkeypatch, str(tmp_path / "new-users"), "alice", "--role", "nope") == 2
    assert not (tmp_path / "new-users").exists()


def test_roles_of_the_config_and_of_the_file_are_known(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"node_id": "n", "auth": {"roles": {
        "porch_only": {"subscribe": ["{root}/device/porch/#"]}}}}))
    path = _users(tmp_path, f"bob:{HASH}:viewer\n")
    assert _passwd(monkeypatch, str(path), "alice", "--role", "porch_only") == 2
    assert _passwd(monkeypatch, str(path), "alice", "--role", "porch_only",
                   "--config", str(config)) == 0
    # the file already gives that role to alice: the daemon's config defines it
    assert _passwd(monkeypatch, str(path), "dave", "--role", "porch_only") == 0
    assert {u: c.role for u, c in read_users_file(path).items()} == \
        {"bob": "viewer", "alice": "porch_only", "dave": "porch_only"}


def test_passwd_cli_keeps_the_mode_of_a_real_process(tmp_path: Path) -> None:
    """The command as the docs show it, in a process of its own, password piped."""
    path = _users(tmp_path, "")
    os.chmod(path, 0o640)
    res = subprocess.run([sys.executable, "-m", "pi_mqtt_gpio.server.main", "passwd",
                          str(path), "erin", "--role", "operator"],
                         input="s3cret\n", capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert verify_password(read_users_file(path)["erin"].password_hash, b"s3cret")
