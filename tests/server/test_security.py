"""Security building blocks with time injected: leases, login throttling, users files, ACL."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pi_mqtt_gpio.errors import BadArgument, LeaseHeld, LeaseRequired
from pi_mqtt_gpio.mqtt.hooks import ClientInfo, Decision
from pi_mqtt_gpio.server.config_loader import parse_config
from pi_mqtt_gpio.server.security import (
    AccessControl,
    ControlLeaseManager,
    read_users_file,
    verify_password,
    write_users_file,
)
from pi_mqtt_gpio.topics import Topics

ALICE = ("alice", "alice-laptop")
BOB = ("bob", "bob-phone")
ALICE_OTHER_CLIENT = ("alice", "alice-phone")


def test_device_leases_conflict_and_write_rules() -> None:
    m = ControlLeaseManager("device", 60)
    lease = m.acquire(ALICE, ["screen"], 30, now=100, wall=1000)
    assert lease.devices == frozenset({"screen"}) and lease.expires == 130
    with pytest.raises(LeaseHeld, match="held by alice until"):
        m.acquire(BOB, ["screen", "lamp"], 30, now=101, wall=1001)
    with pytest.raises(LeaseHeld):
        m.acquire(BOB, None, 30, now=101, wall=1001)  # the global lease overlaps everything
    m.acquire(BOB, ["lamp"], 30, now=101, wall=1001)  # disjoint: fine
    m.check_write(ALICE, "screen", lease_required=True)
    with pytest.raises(LeaseHeld, match="screen is leased by alice"):
        m.check_write(BOB, "screen", lease_required=False)
    with pytest.raises(LeaseHeld):
        # the same user on another client id is another holder
        m.check_write(ALICE_OTHER_CLIENT, "screen", lease_required=False)
    with pytest.raises(LeaseRequired):
        m.check_write(ALICE, "pump", lease_required=True)
    m.check_write(ALICE, "porch", lease_required=False)  # free devices stay free
    assert m.covering("screen")[0].written == {"screen"}


def test_global_scope_makes_every_lease_global() -> None:
    m = ControlLeaseManager("global", 60)
    lease = m.acquire(ALICE, ["screen"], None, now=0, wall=0)
    assert lease.devices is None and lease.ttl == 60
    with pytest.raises(LeaseHeld):
        m.check_write(BOB, "anything", lease_required=False)


def test_renew_release_and_replayed_ids() -> None:
    m = ControlLeaseManager("device", 60)
    lease = m.acquire(ALICE, ["screen"], 10, now=0, wall=0)
    again = m.acquire(ALICE, ["screen"], 20, now=5, wall=5)  # acquiring again renews
    assert again is lease and lease.expires == 25
    m.renew(ALICE, lease.lease_id, None, None, now=20, wall=20)
    assert lease.expires == 40
    with pytest.raises(LeaseHeld, match="another client"):
        m.renew(BOB, lease.lease_id, None, None, now=21, wall=21)  # a replayed id
    with pytest.raises(LeaseRequired):
        m.release(BOB, None, ["screen"])
    assert m.release(ALICE, lease.lease_id, None) == [lease]
    with pytest.raises(LeaseRequired, match="expired or released"):
        m.renew(ALICE, lease.lease_id, None, None, now=22, wall=22)
    with pytest.raises(BadArgument):
        m.acquire(ALICE, ["screen"], 0.5, now=0, wall=0)
    with pytest.raises(BadArgument):
        m.acquire(ALICE, ["screen"], 10_000, now=0, wall=0)


def test_expiry_and_holder_gone_with_injected_time() -> None:
    m = ControlLeaseManager("device", 60)
    a = m.acquire(ALICE, ["screen"], 5, now=100, wall=0)
    b = m.acquire(BOB, ["lamp"], 50, now=100, wall=0)
    assert m.next_deadline() == 105
    assert m.expire(104.9) == []
    assert m.expire(105) == [a]
    assert m.next_deadline() == 150
    assert m.holder_gone((None, "nobody")) == []
    assert m.holder_gone(("mallory", "bob-phone")) == []  # same client id, other user
    assert m.holder_gone(BOB) == [b]
    assert m.leases == {} and m.next_deadline() is None


def test_force_release_by_admin() -> None:
    m = ControlLeaseManager("device", 60)
    m.acquire(ALICE, ["screen"], 30, now=0, wall=0)
    gone = m.release(("root", "admin-console"), None, ["screen"], force=True)
    assert [g.holder for g in gone] == [ALICE]
    m.acquire(BOB, ["screen"], 30, now=1, wall=1)


def test_snapshot_does_not_leak_lease_ids() -> None:
    m = ControlLeaseManager("device", 60)
    lease = m.acquire(ALICE, ["screen"], 30, now=0, wall=1_700_000_000)
    snap = m.snapshot()
    assert snap["scope"] == "device"
    assert snap["leases"][0]["holder"] == "alice" and snap["leases"][0]["devices"] == ["screen"]
    assert lease.lease_id not in str(snap)


def test_users_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "users"
    write_users_file(path, "alice", "$argon2id$v=19$m=65536,t=3,p=4$abc$def", "operator")
    write_users_file(path, "bob", "$argon2id$v=19$m=65536,t=3,p=4$ghi$jkl", "viewer")
    write_users_file(path, "alice", "$argon2id$v=19$m=65536,t=3,p=4$new$new", "admin")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # readable by the service's group
    users = read_users_file(path)
    assert users["alice"].role == "admin" and users["alice"].password_hash.endswith("$new$new")
    assert users["bob"].role == "viewer"
    with pytest.raises(ValueError):
        write_users_file(path, "eve:admin", "$argon2id$x", "admin")
    path.write_text("broken line\n")
    with pytest.raises(ValueError, match="users:1"):
        read_users_file(path)


def test_passwd_cli(tmp_path: Path) -> None:
    path = tmp_path / "users"
    res = subprocess.run([sys.executable, "-m", "pi_mqtt_gpio.server.main", "passwd",
                          str(path), "carol", "--role", "operator", "--stdin"],
                         input="s3cret\n", capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    user = read_users_file(path)["carol"]
    assert user.role == "operator" and user.password_hash
    assert verify_password(user.password_hash, b"s3cret")


def _client(cid: str, username: str | None, role: str) -> ClientInfo:
    return ClientInfo(cid, username, role, 5, "tcp", "127.0.0.1:1")


def test_acl_roles_and_reply_privacy() -> None:
    cfg = parse_config("""
node_id: pi
auth:
  roles:
    porch_only:
      subscribe: ["{root}/device/porch/#"]
      publish: ["{root}/device/porch/call", "{root}/device/porch/set"]
    own_topics:
      subscribe: ["users/{username}/#"]
      publish: ["users/{username}/#"]
      deny: ["users/{username}/secret"]
""")
    acl = AccessControl(cfg.auth, Topics("gatekeeper", "pi"))
    op = _client("c1", "alice", "operator")
    assert acl.authorize_publish(op, "gatekeeper/pi/device/screen/call", 1, False) is \
        Decision.ALLOW
    porch = _client("c2", "pat", "porch_only")
    assert acl.authorize_publish(porch, "gatekeeper/pi/device/porch/call", 1, False) is \
        Decision.ALLOW
    assert acl.authorize_publish(porch, "gatekeeper/pi/device/screen/call", 1, False) is \
        Decision.DENY
    own = _client("c3", "dora", "own_topics")
    assert acl.authorize_publish(own, "users/dora/x", 0, False) is Decision.ALLOW
    assert acl.authorize_publish(own, "users/dora/secret", 0, False) is Decision.DENY
    assert acl.authorize_publish(own, "users/eve/x", 0, False) is Decision.DENY
    anon = _client("c4", None, "own_topics")
    assert acl.authorize_subscribe(anon, "users/+/x", 0) is Decision.DENY
    viewer = _client("c5", "guest", "viewer")
    assert acl.authorize_subscribe(viewer, "gatekeeper/pi/#", 1) is Decision.ALLOW
    assert acl.authorize_publish(viewer, "gatekeeper/pi/device/porch/set", 1, False) is \
        Decision.DENY
    assert acl.authorize_subscribe(viewer, "gatekeeper/pi/reply/c5/#", 1) is Decision.ALLOW
    assert acl.authorize_subscribe(viewer, "gatekeeper/pi/reply/c1/#", 1) is Decision.DENY
    # a {root}/# reader does not receive other clients' replies
    # (and deny filters are enforced at delivery too: their fixed start is protected)
    # (the catalogue too: it is rewritten per reader; the audit: per device it names)
    assert acl.read_protected() == ("gatekeeper/pi/audit", "gatekeeper/pi/devices",
                                    "gatekeeper/pi/reply/", "users/")
    assert not acl.readable(own, "users/dora/secret")
    assert acl.readable(own, "users/dora/x")
    assert acl.readable(viewer, "gatekeeper/pi/reply/c5/rpc")
    assert not acl.readable(viewer, "gatekeeper/pi/reply/c1/rpc")
    assert not acl.readable(_client("c10", "root", "admin"), "gatekeeper/pi/reply/c1/rpc")
    # a client id with wildcards cannot widen {client_id} filters
    sneaky = _client("#", "guest", "viewer")
    assert acl.authorize_subscribe(sneaky, "gatekeeper/pi/reply/x/#", 1) is Decision.DENY


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_file_security_score() -> None:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([str(root / "scripts" / "unit-security-score")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    print(out.stdout.strip())
    score = float(out.stdout.split("level for pi-mqtt-gatekeeper.service:")[1].split()[0])
    assert score <= 2.5
