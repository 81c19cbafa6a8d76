"""The dashboard's weight and load time, and the screenshots in docs/.

Starts the demo config (deploy/demo.yaml, simulated pins) on free ports, opens the page in
Debian's chromium (headless, playwright), and measures, over several fresh page loads:
bytes transferred (HTTP bodies) and the time from navigation to every device card showing
its retained state. With --screenshots DIR it also sets a few devices and saves a
desktop-sized and a phone-sized view.

    .venv/bin/python benchmarks/dashboard.py [--runs 7] [--screenshots docs]

Prints numbers; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_demo(tmp: Path) -> tuple[subprocess.Popen[str], int]:
    config = yaml.safe_load((ROOT / "deploy" / "demo.yaml").read_text())
    ws = free_port()
    config["broker"]["listeners"] = [{"type": "tcp", "host": "127.0.0.1", "port": free_port()},
                                     {"type": "websocket", "host": "127.0.0.1", "port": ws}]
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    exe = Path(sys.executable).parent / "pi-mqtt-gatekeeper"
    proc = subprocess.Popen([str(exe), "--config", str(path), "--simulate"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if "pi-mqtt-gatekeeper ready:" in line:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining
            return proc, ws
    raise SystemExit("the demo did not start")


def load(browser: Any, url: str) -> tuple[float, int, int]:
    """(seconds to every card's state, bytes of HTTP bodies, requests) of one fresh load."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sizes: list[int] = []

    def body(response: Any) -> None:
        try:
            sizes.append(len(response.body()))
        except Exception:  # a WebSocket upgrade, or the page already closed
            pass

    page.on("requestfinished", lambda request: body(request.response()))
    t0 = time.perf_counter()
    page.goto(url)
    page.wait_for_function(
        "() => { const c = [...document.querySelectorAll('.card [data-role=value]')];"
        " return c.length > 10 && c.every((v) => v.textContent !== '…'); }")
    elapsed = time.perf_counter() - t0
    context.close()
    return elapsed, sum(sizes), len(sizes)


def screenshots(browser: Any, url: str, out: Path) -> None:
    desktop = browser.new_context(viewport={"width": 1280, "height": 900})
    page = desktop.new_page()
    page.goto(url)
    page.wait_for_selector("#card-porch_light")
    page.click("#card-porch_light button.toggle")
    page.locator("#card-status_led input[type=range]").fill("60")
    page.locator("#card-mood_light input[type=color]").fill("#2e86de")
    page.locator("#card-volume input[type=range]").fill("35")
    page.locator("#card-screen input[type=range]").fill("40")
    page.click("#card-doorbell button:text-is('Press')")
    page.click("#card-doorbell button:text-is('Release')")
    page.select_option("#lease-devices", ["gate"])
    page.click("#lease-form button[type=submit]")
    page.wait_for_timeout(4500)  # the screen is on its way down; the toasts have gone
    page.screenshot(path=str(out / "dashboard-desktop.png"))
    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                is_mobile=True, has_touch=True)
    p2 = phone.new_page()
    p2.goto(url)
    p2.wait_for_selector("#card-porch_light")
    p2.wait_for_timeout(500)
    p2.screenshot(path=str(out / "dashboard-phone.png"))
    desktop.close()
    phone.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--screenshots", type=Path)
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    static = ROOT / "src" / "pi_mqtt_gpio" / "server" / "web" / "static"
    files = [p for p in static.rglob("*") if p.is_file() and p.suffix in (".html", ".js", ".css", ".svg")]
    raw = sum(p.stat().st_size for p in files)
    gz = sum(len(gzip.compress(p.read_bytes(), 9)) for p in files)
    own = sum(p.stat().st_size for p in files if "vendor" not in p.parts)
    print(f"page files: {raw / 1024:.1f} KiB ({own / 1024:.1f} KiB ours, the rest MQTT.js); "
          f"{gz / 1024:.1f} KiB if gzipped (served uncompressed)")
    with tempfile.TemporaryDirectory() as tmp:
        proc, ws = start_demo(Path(tmp))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                url = f"http://127.0.0.1:{ws}/"
                load(browser, url)  # warm-up (the daemon's file cache)
                runs = [load(browser, url) for _ in range(args.runs)]
                times = sorted(r[0] * 1000 for r in runs)
                print(f"load to a full twin (17 cards, loopback, {args.runs} fresh loads): "
                      f"median {statistics.median(times):.0f} ms, min {times[0]:.0f} ms, "
                      f"max {times[-1]:.0f} ms; {runs[0][1] / 1024:.1f} KiB in "
                      f"{runs[0][2]} HTTP responses")
                if args.screenshots:
                    screenshots(browser, url, args.screenshots)
                    print(f"screenshots: {args.screenshots}/dashboard-desktop.png, "
                          f"{args.screenshots}/dashboard-phone.png")
                browser.close()
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
