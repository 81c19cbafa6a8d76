"""CLI entry point ``pi-mqtt-gatekeeper``.

    pi-mqtt-gatekeeper --config FILE [--simulate] [--log-level LEVEL]
    pi-mqtt-gatekeeper check-config --config FILE
    pi-mqtt-gatekeeper hash-password [--password-stdin]
    pi-mqtt-gatekeeper passwd FILE USER [--role ROLE] [--config FILE] [--password-stdin]
    pi-mqtt-gatekeeper gpio-owners [--config FILE] [--chip CHIP] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from pi_mqtt_gpio.server.config_loader import ConfigError, load_config
from pi_mqtt_gpio.version import package_version

__all__ = ["main"]

SWITCH_INTERVAL_S = 0.0005  # the daemon's sys.setswitchinterval (Python's default: 0.005)


def _setup_logging(level: str) -> None:
    # journald adds its own timestamps; "<level>name: message" keeps lines short and greppable.
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.captureWarnings(True)  # gpiozero's warnings become one log line each
    warnings.filterwarnings("once")


def _run_loop(coro: object) -> int:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.Runner()
    with runner:
        return int(runner.run(coro))  # type: ignore[arg-type]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pi-mqtt-gatekeeper",
        description="Raspberry Pi GPIO Gatekeeper with an embedded MQTT 3.1.1/5.0 broker",
    )
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {package_version()}")
    parser.add_argument("--config", metavar="FILE", help="YAML config file (also accepted "
                        "after the subcommand)")
    parser.add_argument("--simulate", action="store_true",
                        help="simulated pins (gpiozero MockFactory) instead of real GPIO")
    parser.add_argument("--log-level", default="info", metavar="LEVEL",
                        choices=["debug", "info", "warning", "error"],
                        help="debug, info (default), warning or error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                title="commands (none: run the gatekeeper)")

    def config_option(command: argparse.ArgumentParser, text: str) -> None:
        # SUPPRESS: a --config given before the subcommand is kept, not reset to None.
        command.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=text)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    config_option(check, "the config to check")
    hashp = sub.add_parser("hash-password", help="print an argon2id hash for auth.users")
    hashp.add_argument("--password-stdin", "--stdin", dest="stdin", action="store_true",
                       help="read the password from stdin (one line)")
    passwd = sub.add_parser("passwd", help="add or change a user in a users file "
                                           "(like mosquitto_passwd)")
    passwd.add_argument("file", metavar="FILE", help="the users file")
    passwd.add_argument("user", metavar="USER")
    passwd.add_argument("--role", help="admin, operator, viewer, homeassistant or a role of "
                                       "--config (default: the user's role, viewer for a "
                                       "new user)")
    config_option(passwd, "the config whose auth.roles may be given as --role")
    passwd.add_argument("--password-stdin", "--stdin", dest="stdin", action="store_true",
                        help="read the password from stdin (one line)")
    owners = sub.add_parser("gpio-owners", help="list every line of the GPIO chip: used or "
                                                "free, consumer, ours or foreign")
    config_option(owners, "for hardware.chip and consumer_tag")
    owners.add_argument("--chip", help="chip number, /dev/gpiochipN or label (default: auto)")
    owners.add_argument("--json", action="store_true")
    doc = sub.add_parser("asyncapi", help="print an AsyncAPI 3.0 document of the node's "
                                          "topics and payloads")
    config_option(doc, "the node's config")
    imp = sub.add_parser("import-mqtt-io", help="convert an mqtt-io config (its topics keep "
                                                "working beside the gatekeeper's own)")
    imp.add_argument("old", metavar="OLD.yml", help="the mqtt-io config (YAML)")
    imp.add_argument("-o", "--output", metavar="NEW.yaml",
                     help="write the new config here, mode 0600 (default: stdout); an "
                          "existing file only with --force")
    imp.add_argument("--force", action="store_true",
                     help="replace an existing output file (never a symbolic link)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pi_mqtt_gpio.terminal import run_command

    return run_command(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    if args.command == "gpio-owners":
        return _gpio_owners(args)
    if args.command in ("hash-password", "passwd"):
        return _passwords(args)
    if args.command == "import-mqtt-io":
        return _import_mqtt_io(args.old, args.output, args.force)
    path = args.config
    if not path:
        where = f"{args.command} --config FILE" if args.command else "--config FILE"
        parser.error(f"the config file is needed: {where}")
    if args.command == "asyncapi":
        return _asyncapi(path, args.simulate)
    return _check_and_run(path, checking=args.command == "check-config",
                          simulate=args.simulate)


def _asyncapi(path: str, simulate: bool) -> int:
    """``asyncapi --config FILE``: the node's AsyncAPI 3.0 document on stdout."""
    import json

    from pi_mqtt_gpio.server.asyncapi import asyncapi

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    simulate = simulate or config.hardware.pin_factory == "mock"
    print(json.dumps(asyncapi(config, simulate=simulate), indent=2))
    return 0


def _import_mqtt_io(old: str, output: str | None, force: bool = False) -> int:
    """``import-mqtt-io OLD.yml [-o NEW.yaml [--force]]``: 0 when anything was converted
    (what was not is listed on stderr and in the output), 1 when nothing could be, 2 for an
    unreadable file or an output that may not be written."""
    from pi_mqtt_gpio.server.compat.mqtt_io_import import convert, render

    try:
        with open(old, encoding="utf-8") as f:
            conv = convert(f.read())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"import-mqtt-io: {old}: {exc}", file=sys.stderr)
        return 2
    text = render(conv, old)
    for warning in conv.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for item in conv.not_converted:
        print(f"not converted: {item}", file=sys.stderr)
    if not conv.config.get("devices"):
        print(f"import-mqtt-io: {old}: no input, output or sensor could be converted",
              file=sys.stderr)
        if not conv.converted:
            return 1
    if output:
        try:
            problem = _write_private(output, text.encode("utf-8"), force)
        except OSError as exc:
            problem = str(exc)
        if problem is not None:
            print(f"import-mqtt-io: {output}: {problem}", file=sys.stderr)
            return 2
        print(f"{output}: {len(conv.converted)} converted, {len(conv.not_converted)} not "
              f"converted", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _write_private(path: str, data: bytes, force: bool) -> str | None:
    """Write ``data`` as a new file ``path``, mode 0600 (it may hold password hashes): a
    temporary file in the same directory, created exclusively, is written, fsync'ed and then
    linked (no ``force``: fails if the name was taken meanwhile) or renamed (``force``) into
    place. A file replaced with ``force`` keeps its owner and group and at most mode 0640
    (the installed config is 0640 root:gatekeeper: the service must still read it, nobody
    else). A symbolic link at ``path`` is never followed nor replaced. Returns why not."""
    import contextlib
    import stat
    import tempfile

    target = Path(path)
    try:
        st: os.stat_result | None = os.lstat(target)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            return "is a symbolic link: refused (name the file itself)"
        if not stat.S_ISREG(st.st_mode):
            return "exists and is not a regular file: refused"
        if not force:
            return "exists: refused (--force replaces it)"
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")  # O_EXCL, 0600
    try:
        try:
            mode = 0o600
            if st is not None:  # replaced (force): its owner, group and mode, never more
                mode = stat.S_IMODE(st.st_mode) & 0o640
                if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                    with contextlib.suppress(PermissionError):
                        os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            if os.path.islink(target):
                return "is a symbolic link: refused (name the file itself)"
            os.replace(tmp, target)  # replaces a name: never writes through a link
        else:
            try:
                os.link(tmp, target)  # atomic: fails if the name exists, whatever it is
            except FileExistsError:
                return "exists: refused (--force replaces it)"
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return None


def _read_password(from_stdin: bool) -> str | None:
    """From stdin when asked or when stdin is not a terminal (a pipe: no prompt, no echo),
    else typed twice at a prompt; None when the two differ."""
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("Password: ")
    return password if password == getpass.getpass("Again: ") else None


def _passwords(args: argparse.Namespace) -> int:
    """``hash-password`` and ``passwd``."""
    from pi_mqtt_gpio.server.security.passwords import hash_password

    roles: set[str] = set()
    if args.command == "passwd":
        from pi_mqtt_gpio.server.config import BUILTIN_ROLES
        from pi_mqtt_gpio.server.security.passwords import users_file_roles

        # What a role may be, known before the password is asked for.
        roles = set(BUILTIN_ROLES)
        config_path = args.config
        try:
            if config_path:
                roles |= set(load_config(config_path).auth.roles)
            roles |= users_file_roles(args.file)
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        except (OSError, ValueError) as exc:
            print(f"passwd: {exc}", file=sys.stderr)
            return 1
        if args.role is not None and args.role not in roles:
            hint = "" if config_path else "; a role of your config needs --config FILE"
            from pi_mqtt_gpio.server.schema import did_you_mean

            print(f"passwd: {args.role!r} is not a role{did_you_mean(args.role, roles)} "
                  f"(roles: {', '.join(sorted(roles))}){hint}; {args.file} was not changed",
                  file=sys.stderr)
            return 2
    password = _read_password(args.stdin)
    if password is None:
        print("passwords differ", file=sys.stderr)
        return 1
    if not password:
        print("empty password refused", file=sys.stderr)
        return 1
    if args.command == "hash-password":
        print(hash_password(password))
        return 0
    from pi_mqtt_gpio.server.security.passwords import UnknownRoleError, write_users_file

    try:
        role = write_users_file(args.file, args.user, hash_password(password), args.role,
                                roles)
    except UnknownRoleError as exc:
        print(f"passwd: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"passwd: {exc}", file=sys.stderr)
        return 1
    print(f"{args.user} ({role}) written to {args.file}; "
          f"send SIGHUP to a running gatekeeper to reload it")
    return 0


def _check_and_run(path: str, *, checking: bool, simulate: bool) -> int:
    """Load and check the config (exit 2 with every problem); then either say ``ok``
    (check-config) or run the daemon."""
    from pi_mqtt_gpio.server.preflight import preflight

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    findings = preflight(config, simulate=simulate)
    for warning in findings.warnings:
        if checking:
            print(f"warning: {warning}", file=sys.stderr)
        else:
            logging.getLogger("pi_mqtt_gpio.config").warning("%s", warning)
    if findings.errors:
        print(f"{path}: cannot start:\n" + "\n".join(f"  {e}" for e in findings.errors),
              file=sys.stderr)
        return 2
    if checking:
        print("ok" if not findings.warnings else f"ok ({len(findings.warnings)} warnings)")
        return 0

    from pi_mqtt_gpio.server.daemon import run

    # The hardware worker thread needs the interpreter lock to run a command. While the
    # event loop is busy (clients flooding the broker) it holds the lock until Python's
    # switch interval runs out, 5 ms by default: a command waited that long for the worker.
    # A forced switch happens only while another thread waits for the lock, so a shorter
    # interval costs nothing when the worker is idle (measured: an RPC under 8 flooding
    # publishers p50 4.1-4.9 ms instead of 5.9-9.4 ms, max 6-13 ms instead of 43-100 ms).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return _run_loop(run(config, simulate=simulate))


def _gpio_owners(args: argparse.Namespace) -> int:
    import json

    from pi_mqtt_gpio.errors import GatekeeperError
    from pi_mqtt_gpio.server.config import HardwareConfig
    from pi_mqtt_gpio.server.hardware import line_owners, resolve_chip

    hardware = HardwareConfig()
    if args.config:
        try:
            hardware = load_config(args.config).hardware
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 2
    try:
        chip = resolve_chip(args.chip if args.chip is not None else hardware.chip)
        owners = line_owners(chip, hardware.consumer_tag)
    except (GatekeeperError, OSError, Exception) as exc:
        print(f"gpio-owners: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"chip": f"gpiochip{chip}", "lines": [o.to_json() for o in owners]}))
        return 0
    print(f"gpiochip{chip}: {len(owners)} lines")
    for o in owners:
        who = "ours" if o.ours else ("foreign" if o.used else "")
        print(f"{o.line:>4}  {o.name or '-':<12} {'used' if o.used else 'free':<5} "
              f"{o.consumer or '-':<32} {who}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
