"""A real Home Assistant for the tests: started from the cached venv of scripts/ha-setup with
a minimal configuration on a free port, a user made with HA's own ``auth`` script, a token
from HA's login flow, the MQTT integration set up through HA's config flow (as a user does
in the UI), and HA's websocket API to read its registries and call its services."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[2]

CONFIGURATION = """
homeassistant:
  name: Test home
  latitude: 52.5
  longitude: 13.4
  elevation: 30
  unit_system: metric
  time_zone: UTC
  country: DE
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: {port}
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: info
"""


def ha_venv() -> Path:
    """The cached HA venv (set up, or waited for while a background setup runs: the first
    install downloads about 630 MB and may take many minutes on a busy machine)."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "ha-setup")], capture_output=True,
                         text=True, timeout=2300)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/ha-setup failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HomeAssistant:
    def __init__(self, venv: Path, config_dir: Path) -> None:
        self.venv = venv
        self.dir = config_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""
        self.log = config_dir / "home-assistant.out"
        self._ids = itertools.count(1)
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "configuration.yaml").write_text(CONFIGURATION.format(port=self.port))

    # --- process -------------------------------------------------------------------------------
    def add_user(self, username: str, password: str) -> None:
        subprocess.run([str(self.venv / "bin" / "hass"), "--script", "auth", "--config",
                        str(self.dir), "add", username, password], check=True,
                       capture_output=True, timeout=60)

    def start(self, timeout: float = 90.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(self.venv / "bin" / "hass"), "-c", str(self.dir), "--skip-pip"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.dir)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("Home Assistant exited:\n" + self.log_text()[-3000:])
            try:
                urllib.request.urlopen(self.base + "/api/", timeout=2)
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for a token
                    if "Activating recovery mode" in self.log_text():
                        raise RuntimeError("Home Assistant started in recovery mode:\n"
                                           + self.log_text()[-3000:]) from None
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError("Home Assistant did not come up:\n" + self.log_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # --- HTTP ----------------------------------------------------------------------------------
    def _post(self, path: str, data: dict[str, Any], *, form: bool = False,
              auth: bool = True) -> Any:
        body = urllib.parse.urlencode(data).encode() if form else json.dumps(data).encode()
        req = urllib.request.Request(self.base + path, data=body, method="POST")
        req.add_header("Content-Type", "application/x-www-form-urlencoded" if form
                       else "application/json")
        if auth and self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def login(self, username: str, password: str) -> None:
        """A token through HA's login flow, as its frontend gets one."""
        client = self.base + "/"
        flow = self._post("/auth/login_flow", {"client_id": client, "redirect_uri": client,
                                               "handler": ["homeassistant", None]}, auth=False)
        done = self._post(f"/auth/login_flow/{flow['flow_id']}",
                          {"client_id": client, "username": username, "password": password},
                          auth=False)
        if done.get("type") != "create_entry":
            raise RuntimeError(f"login refused: {done}")
        token = self._post("/auth/token", {"grant_type": "authorization_code",
                                           "code": done["result"], "client_id": client},
                           form=True, auth=False)
        self.token = token["access_token"]

    def add_mqtt(self, port: int, username: str, password: str) -> dict[str, Any]:
        """Settings > Devices & services > Add integration > MQTT, through the same flow."""
        flow = self._post("/api/config/config_entries/flow", {"handler": "mqtt",
                                                              "show_advanced_options": False})
        result: dict[str, Any] = self._post(
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            {"broker": "127.0.0.1", "port": port, "username": username, "password": password})
        if result.get("type") != "create_entry":
            raise RuntimeError(f"the MQTT integration was not set up: {result}")
        return result

    # --- websocket API -------------------------------------------------------------------------
    def ws(self, *messages: dict[str, Any]) -> list[Any]:
        """Send each message over one authenticated websocket; return each result."""
        results = []
        with connect(f"ws://127.0.0.1:{self.port}/api/websocket", open_timeout=10,
                     max_size=2**24) as ws:
            assert json.loads(ws.recv(10))["type"] == "auth_required"
            ws.send(json.dumps({"type": "auth", "access_token": self.token}))
            assert json.loads(ws.recv(10))["type"] == "auth_ok"
            for message in messages:
                ident = next(self._ids)
                ws.send(json.dumps({"id": ident, **message}))
                while True:
                    reply = json.loads(ws.recv(30))
                    if reply.get("id") == ident and reply.get("type") == "result":
                        break
                if not reply.get("success"):
                    raise RuntimeError(f"{message['type']} failed: {reply.get('error')}")
                results.append(reply.get("result"))
        return results

    def entities(self) -> list[dict[str, Any]]:
        return list(self.ws({"type": "config/entity_registry/list"})[0])

    def devices(self) -> list[dict[str, Any]]:
        return list(self.ws({"type": "config/device_registry/list"})[0])

    def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in self.ws({"type": "get_states"})[0]}

    def call(self, domain: str, service: str, entity_id: str, **data: Any) -> None:
        self.ws({"type": "call_service", "domain": domain, "service": service,
                 "service_data": data, "target": {"entity_id": entity_id}})

    def mqtt_problems(self) -> list[str]:
        """Lines of HA's log that reject or fail on something MQTT sent it."""
        bad = []
        for line in self.log_text().splitlines():
            low = line.lower()
            if "disconnected from mqtt server" in low:
                continue  # the tests restart the gatekeeper on purpose
            if ("mqtt" in low or "discovery" in low) and (" error " in low or "invalid" in low
                                                         or "exception" in low
                                                         or " warning " in low):
                bad.append(line)
        return bad
