"""scripts/build-deb: the package's metadata and contents, the program runs from the extracted
tree (no path of the build directory left in it), lintian reports nothing but the tags a venv
under /opt brings, and installing, removing and purging it in a chroot of a Debian 12 root file
system (the VM stage's, when it is there) makes and removes the user, the config and the state."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOTFS = Path(os.environ.get("PI_MQTT_DEB_ROOTFS",
                             "/var/cache/pi-mqtt-gpio-vm/build/rootfs"))
# What a self-contained venv under /opt brings and the package accepts (see scripts/build-deb).
ACCEPTED_LINTIAN = {
    "dir-or-file-in-opt",  # the venv lives in /opt/pi-mqtt-gatekeeper by design
    "unusual-interpreter",  # the venv's scripts run the venv's python
    "embedded-library",  # PyYAML's wheel carries libyaml
    "maintainer-script-calls-systemctl",  # no debhelper: the scripts call systemctl themselves
    "no-manual-page",
    "copyright-without-copyright-notice",
    # the maintainer address is a placeholder unless DEBFULLNAME/DEBEMAIL are set
    "bogus-mail-host", "bogus-mail-host-in-debian-changelog", "root-in-contact",
}

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="no dpkg-deb")


def _version() -> str:
    m = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert m
    return m.group(1)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    # built as a root login might: umask 000 (build-deb sets its own)
    res = subprocess.run(["bash", str(ROOT / "scripts/build-deb"), "--out", str(out)],
                         capture_output=True, text=True, timeout=600,
                         preexec_fn=lambda: os.umask(0))
    assert res.returncode == 0, res.stderr[-3000:]
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    # built from a git checkout: <version>+git<commits>.<commit> (each commit's package newer)
    debs = list(out.glob(f"pi-mqtt-gatekeeper_{_version()}*_{arch}.deb"))
    assert len(debs) == 1 and res.stdout.strip() == str(debs[0]), (debs, res.stdout)
    assert re.fullmatch(rf"pi-mqtt-gatekeeper_{re.escape(_version())}(\+git\d+\.[0-9a-f]+)?_{arch}\.deb",
                        debs[0].name), debs[0].name
    return debs[0]


def test_metadata_and_contents(deb: Path) -> None:
    info = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True, text=True,
                          check=True).stdout
    assert re.search(rf"Version: {re.escape(_version())}(\+git\d+\.[0-9a-f]+)?\n", info), info
    assert re.search(r"Depends: python3 \(>= 3\.\d+\), python3 \(<< 3\.\d+\), adduser", info)
    conffiles = subprocess.run(["dpkg-deb", "--field", str(deb)], capture_output=True,
                               text=True, check=True)
    assert "Package: pi-mqtt-gatekeeper" in conffiles.stdout
    control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True,
                             check=True).stdout
    names = subprocess.run(["tar", "-t"], input=control, capture_output=True,
                           check=True).stdout.decode().split()
    assert {"./conffiles", "./postinst", "./prerm", "./postrm", "./md5sums"} <= set(names)
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True,
                             text=True, check=True).stdout
    for path in ("./opt/pi-mqtt-gatekeeper/venv/bin/pi-mqtt-gatekeeper",
                 "./usr/bin/pi-mqtt-gatekeeper -> /opt/pi-mqtt-gatekeeper/venv/bin/pi-mqtt-gatekeeper",
                 "./usr/bin/pi-mqtt-gpio -> /opt/pi-mqtt-gatekeeper/venv/bin/pi-mqtt-gpio",
                 "./lib/systemd/system/pi-mqtt-gatekeeper.service",
                 "./lib/udev/rules.d/99-pi-mqtt-gatekeeper-gpio.rules",
                 "./etc/pi-mqtt-gatekeeper/config.yaml",
                 "./usr/share/doc/pi-mqtt-gatekeeper/copyright",
                 "./usr/share/doc/pi-mqtt-gatekeeper/install.md"):
        assert path in listing, path
    assert "root/root" in listing and "/site-packages/pip/" not in listing
    assert "__pycache__" not in listing
    # nothing a local user could change (code that runs as the service, and as root in postinst)
    loose = [line for line in listing.splitlines()
             if not line.startswith("l") and (line[5] == "w" or line[8] == "w")]
    assert loose == []


def test_program_runs_from_the_extracted_tree(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    venv = tmp_path / "opt/pi-mqtt-gatekeeper/venv"
    found = subprocess.run(["grep", "-rlI", "/tmp/", str(venv)], capture_output=True, text=True)
    assert found.stdout == "", "the build directory is named in: " + found.stdout
    for cli in ("pi-mqtt-gatekeeper", "pi-mqtt-gpio"):
        first = (venv / "bin" / cli).read_text().splitlines()[0]
        assert first == "#!/opt/pi-mqtt-gatekeeper/venv/bin/python", first
    py = str(venv / "bin/python")
    version = subprocess.run([py, "-c", "import sys; from pi_mqtt_gpio.server.main import main;"
                              " sys.argv = ['pi-mqtt-gatekeeper', '--version']; main()"],
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and _version() in version.stdout, version.stderr
    client = subprocess.run([py, "-c", "from pi_mqtt_gpio.client import Gatekeeper"],
                            capture_output=True, text=True, timeout=60)
    assert client.returncode == 0, client.stderr


@pytest.mark.skipif(shutil.which("lintian") is None, reason="no lintian")
def test_lintian_reports_only_the_accepted_tags(deb: Path) -> None:
    res = subprocess.run(["lintian", "--no-tag-display-limit", str(deb)], capture_output=True,
                         text=True, timeout=300)
    tags = set(re.findall(r"^[EWX]: pi-mqtt-gatekeeper: (\S+)", res.stdout, re.M))
    assert tags - ACCEPTED_LINTIAN == set(), res.stdout[-3000:]


@pytest.fixture
def chroot(tmp_path: Path) -> Iterator[Path]:
    """A throw-away overlay of a Debian 12 root file system (needs root)."""
    if os.geteuid() != 0 or not (ROOTFS / "usr/sbin/adduser").exists() \
            or not (ROOTFS / "usr/bin/python3").exists():
        pytest.skip(f"needs root and a Debian rootfs with adduser and python3 at {ROOTFS}")
    up, work, root = tmp_path / "up", tmp_path / "work", tmp_path / "root"
    for d in (up, work, root):
        d.mkdir()
    mount = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={ROOTFS},upperdir={up},workdir={work}", str(root)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"no overlay mount here: {mount.stderr.strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=True)


def _in(root: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chroot", str(root), "bash", "-ec", script], capture_output=True,
                          text=True, timeout=300)


def test_install_remove_purge_in_a_chroot(deb: Path, chroot: Path) -> None:
    shutil.copy(deb, chroot / "tmp/p.deb")
    res = _in(chroot, "dpkg -i /tmp/p.deb")
    assert res.returncode == 0, res.stdout + res.stderr
    res = _in(chroot, "id -nG gatekeeper; stat -c '%n %U:%G %a' /etc/pi-mqtt-gatekeeper "
                      "/etc/pi-mqtt-gatekeeper/config.yaml /etc/pi-mqtt-gatekeeper/users "
                      "/var/lib/pi-mqtt-gatekeeper; pi-mqtt-gatekeeper --version; "
                      "pi-mqtt-gpio --help >/dev/null; getent passwd gatekeeper")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "gpio" in lines[0].split()
    assert lines[1:5] == ["/etc/pi-mqtt-gatekeeper root:gatekeeper 750",
                          "/etc/pi-mqtt-gatekeeper/config.yaml root:gatekeeper 640",
                          "/etc/pi-mqtt-gatekeeper/users root:gatekeeper 640",
                          "/var/lib/pi-mqtt-gatekeeper gatekeeper:gatekeeper 700"]
    assert lines[5] == f"pi-mqtt-gatekeeper {_version()}"
    assert lines[6].endswith(":/var/lib/pi-mqtt-gatekeeper:/usr/sbin/nologin")
    # Remove keeps the (changed) config and the state; purge takes them and the user.
    res = _in(chroot, "echo '# mine' >> /etc/pi-mqtt-gatekeeper/config.yaml; "
                      "dpkg -r pi-mqtt-gatekeeper; tail -1 /etc/pi-mqtt-gatekeeper/config.yaml; "
                      "test -d /var/lib/pi-mqtt-gatekeeper; test ! -e /opt/pi-mqtt-gatekeeper; "
                      "test ! -e /usr/bin/pi-mqtt-gatekeeper")
    assert res.returncode == 0 and res.stdout.endswith("# mine\n"), res.stdout + res.stderr
    res = _in(chroot, "dpkg -P pi-mqtt-gatekeeper; test ! -e /etc/pi-mqtt-gatekeeper; "
                      "test ! -e /var/lib/pi-mqtt-gatekeeper; ! getent passwd gatekeeper; "
                      "! getent group gatekeeper")
    assert res.returncode == 0, res.stdout + res.stderr
