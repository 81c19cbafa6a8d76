"""``broker.external.acl_probe`` in check-config and at start: required in external mode, an
explicit ``false`` warned at every start, an unreadable password file refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import start_gatekeeper
from tests.server.test_preflight import _both, _cli

BASE = "node_id: x\nbroker:\n  mode: external\n  external: {host: 127.0.0.1, port: 1, "


@pytest.mark.parametrize(("probe", "message"), [
    ("", "broker.external: acl_probe: give {username, password_file}"),
    ("acl_probe: {username: p}",
     "broker.external.acl_probe.password_file: required key missing"),
    ("acl_probe: {username: p, password_file: /nonexistent/pw, interval_s: 1}",
     "broker.external.acl_probe.interval_s"),
])
def test_refused_without_a_usable_probe(tmp_path: Path, probe: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE + probe + "}\n")
    for res in _both(path):
        assert res.returncode == 2 and message in res.stderr, res.stderr


def test_an_unreadable_probe_password_is_warned(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE + "acl_probe: {username: p, password_file: /nonexistent/pw}}\n")
    res = _cli("check-config", "--config", str(path))
    assert res.returncode == 0, res.stderr
    assert "acl_probe.password_file: cannot read /nonexistent/pw" in res.stderr, res.stderr


def test_acl_probe_false_is_warned(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE + "acl_probe: false}\n")
    res = _cli("check-config", "--config", str(path))
    assert res.returncode == 0 and "acl_probe is false" in res.stderr, res.stderr
    gk = start_gatekeeper(tmp_path, yaml.safe_load(BASE + "acl_probe: false}\n"), ready=False)
    try:
        assert "WARNING" in gk.wait_log("acl_probe is false", 20)  # at every start too
    finally:
        gk.stop()
