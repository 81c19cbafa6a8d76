"""``pi-mqtt-gpio``: the gatekeeper from a terminal.

    pi-mqtt-gpio devices
    pi-mqtt-gpio call porch_light blink on_time=0.2 n=3
    pi-mqtt-gpio call status_led value 0.5
    pi-mqtt-gpio watch [DEVICE]
    pi-mqtt-gpio nodes
    pi-mqtt-gpio lease status
    pi-mqtt-gpio lease acquire [DEVICE ...] [--ttl S] [--for S]   (held until Ctrl-C)
    pi-mqtt-gpio lease run DEVICE ... [--ttl S] -- call DEVICE METHOD [ARGS] [-- ...]
    pi-mqtt-gpio lease renew|release [DEVICE ...] [--lease-id ID] [--force]

Connection options come from flags or the environment: PI_MQTT_HOST, PI_MQTT_PORT,
PI_MQTT_USER, PI_MQTT_PASSWORD, PI_MQTT_NODE (none: the only node on the broker, or this
host's name when several are). The password, in this order: --password (seen
by every user in the process list: kept for old scripts), --password-stdin (one line),
--password-file FILE (its first line), PI_MQTT_PASSWORD, else a prompt when there is a user
name and stdin is a terminal.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pi_mqtt_gpio.client.connection import Gatekeeper
from pi_mqtt_gpio.client.lease import Lease
from pi_mqtt_gpio.errors import GatekeeperError
from pi_mqtt_gpio.payloads import State
from pi_mqtt_gpio.version import package_version

__all__ = ["main"]


def _value(text: str) -> Any:
    """A command-line argument as JSON when it parses (0.5, true, null, [1,0,0]), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _connect(args: argparse.Namespace) -> Gatekeeper:
    return Gatekeeper(args.host, args.port, username=args.user, password=args.password,
                      node_id=args.node, base_topic=args.base_topic,
                      tls=args.cafile or args.tls, protocol=4 if args.v311 else 5,
                      timeout=args.timeout, fleet=True if args.fleet else None)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pi-mqtt-gpio",
                                     description="Talk to a pi-mqtt-gatekeeper from a terminal.")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {package_version()}")
    parser.add_argument("--host", help="gatekeeper or broker host (PI_MQTT_HOST)")
    parser.add_argument("--port", type=int, help="port (PI_MQTT_PORT; 1883, 8883 with TLS)")
    parser.add_argument("--user", help="user name (PI_MQTT_USER)")
    parser.add_argument("--fleet", action="store_true",
                        help="the node is on a shared (external) broker: append the user name "
                             "to command topics (found out from the node by itself otherwise)")
    parser.add_argument("--password", help="password (PI_MQTT_PASSWORD); on the command line "
                                           "other users see it in the process list: prefer "
                                           "--password-stdin, --password-file or the prompt")
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from stdin (one line)")
    parser.add_argument("--password-file", metavar="FILE",
                        help="read the password from this file (its first line)")
    parser.add_argument("--node", help="the gatekeeper's node_id (PI_MQTT_NODE; default: the "
                                       "only node on the broker)")
    parser.add_argument("--base-topic", metavar="TOPIC", default="gatekeeper",
                        help="the gatekeeper's base_topic (default: gatekeeper)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system CAs)")
    parser.add_argument("--cafile", metavar="FILE", help="TLS with this CA certificate")
    parser.add_argument("--v311", action="store_true", help="use MQTT 3.1.1")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=5.0,
                        help="how long to wait for a connection or a reply (default: 5)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands",
                                required=True)
    _commands(sub)
    sub.add_parser("nodes", help="list the gatekeeper nodes on this broker")
    lease = sub.add_parser("lease", help="control leases: status, acquire (and hold), run a "
                                         "command holding one, renew, release")
    lease.add_argument("action", metavar="ACTION",
                       choices=["status", "acquire", "run", "renew", "release"],
                       help="status, acquire, run, renew or release")
    lease.add_argument("devices", metavar="DEVICE", nargs="*",
                       help="device names (none: the global lease)")
    lease.add_argument("--ttl", metavar="SECONDS", type=float, default=30.0,
                       help="lease time, renewed every third of it (default: 30)")
    lease.add_argument("--for", metavar="SECONDS", dest="hold", type=float,
                       help="acquire: hold it this long, then release it (default: until "
                            "Ctrl-C)")
    lease.add_argument("--lease-id", metavar="ID")
    lease.add_argument("--force", action="store_true",
                       help="release someone else's lease (needs the force_release right)")
    lease.epilog = ("lease run DEVICE... -- COMMAND [-- COMMAND ...]: acquire the lease, run "
                    "each command (call, devices, watch) on the connection that holds it, "
                    "release it; exits with the first failing command's status")
    return parser


def _commands(sub: Any) -> None:
    """The commands that act on one node (also what ``lease run`` runs)."""
    sub.add_parser("devices", help="list the devices, their types and methods")
    call = sub.add_parser("call", help="call a method: ARGS are values or key=value")
    call.add_argument("device", metavar="DEVICE")
    call.add_argument("method", metavar="METHOD")
    call.add_argument("args", metavar="ARG", nargs="*", help="a value or key=value")
    watch = sub.add_parser("watch", help="print states and events as they happen")
    watch.add_argument("device", metavar="DEVICE", nargs="?")


def _inner_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pi-mqtt-gpio lease run DEVICE... --")
    _commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


def _password(args: argparse.Namespace) -> str | None:
    """The password from the one place it was given (see the module's doc), or None."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if args.password_file is not None:
        lines = Path(args.password_file).read_text(encoding="utf-8").splitlines()
        return lines[0] if lines else ""
    env = os.environ.get("PI_MQTT_PASSWORD")
    if env is not None:
        return env
    user = args.user if args.user is not None else os.environ.get("PI_MQTT_USER")
    if user and sys.stdin.isatty():
        return getpass.getpass(f"Password for {user}: ")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from pi_mqtt_gpio.terminal import run_command

    return run_command(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args, commands = _parse(parser, list(sys.argv[1:] if argv is None else argv))
    problem = _read_password(parser, args)
    if problem is not None:
        print(f"pi-mqtt-gpio: {problem}", file=sys.stderr)
        return 2
    if args.command == "nodes":
        return _nodes(args)
    if not args.node and not os.environ.get("PI_MQTT_NODE"):
        problem = _choose_node(args)
        if problem is not None:
            print(f"pi-mqtt-gpio: {problem}", file=sys.stderr)
            return 2
    try:
        gk = _connect(args)
    except GatekeeperError as exc:
        print(f"pi-mqtt-gpio: {exc.message}", file=sys.stderr)
        return 2
    try:
        if args.command == "lease" and args.action == "run":
            return _lease_run(gk, args, commands)
        if args.command == "lease":
            return _lease(gk, args)
        return _command(gk, args)
    except GatekeeperError as exc:
        print(f"{exc.code.value}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        gk.close()


def _parse(parser: argparse.ArgumentParser, words: list[str]
           ) -> tuple[argparse.Namespace, list[argparse.Namespace]]:
    """The arguments, and the commands after ``--`` of ``lease run ... -- COMMAND [-- ...]``."""
    inner: list[list[str]] = []
    args = None
    if "--" in words:
        cut = words.index("--")
        outer = parser.parse_args(words[:cut])
        if outer.command == "lease" and outer.action == "run":
            args, rest = outer, words[cut + 1:]
            while "--" in rest:
                inner.append(rest[:rest.index("--")])
                rest = rest[rest.index("--") + 1:]
            inner.append(rest)
    if args is None:
        args = parser.parse_args(words)
    commands: list[argparse.Namespace] = []
    if args.command == "lease" and args.action == "run":
        if not args.devices or not any(inner):
            parser.error("lease run DEVICE... -- COMMAND: name the devices, and after -- "
                         "the command to run holding their lease")
        commands = [_inner_parser().parse_args(words) for words in inner if words]
    return args, commands


def _read_password(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """``args.password`` from the one way it was given; a problem, or None."""
    given = [flag for flag, on in (("--password", args.password is not None),
                                   ("--password-stdin", args.password_stdin),
                                   ("--password-file", args.password_file is not None)) if on]
    if len(given) > 1:
        parser.error(f"give the password one way, not with {' and '.join(given)}")
    if args.password is None:
        try:
            args.password = _password(args)
        except (OSError, UnicodeDecodeError) as exc:
            return str(exc)
        except EOFError:
            return "no password given"
    return None


def _command(gk: Gatekeeper, args: argparse.Namespace,
             stop: threading.Event | None = None) -> int:
    """devices, call or watch (until ``stop`` is set)."""
    if args.command == "devices":
        return _devices(gk)
    if args.command == "call":
        return _call(gk, args)
    return _watch(gk, args.device, stop or threading.Event())


def _choose_node(args: argparse.Namespace) -> str | None:
    """No ``--node``: the only node on the broker (an online one first), else this host's name
    when it is one of them; sets ``args.node``. Returns what is wrong, or None."""
    from pi_mqtt_gpio.client.nodes import list_nodes

    try:
        nodes = list_nodes(args.host, args.port, username=args.user, password=args.password,
                           base_topic=args.base_topic, tls=args.cafile or args.tls,
                           protocol=4 if args.v311 else 5, wait=min(args.timeout, 0.5))
    except (OSError, GatekeeperError) as exc:
        return str(exc)
    online = [n for n in nodes if n.status == "online"]
    candidates = online or nodes
    here = socket.gethostname().split(".")[0]
    if len(candidates) == 1:
        args.node = candidates[0].node_id
    elif any(n.node_id == here for n in candidates):
        args.node = here
    elif not candidates:
        return f"no gatekeeper nodes on this broker (base topic {args.base_topic!r})"
    else:
        listed = ", ".join(f"{n.node_id} ({n.status})" for n in nodes)
        return f"several gatekeeper nodes on this broker: {listed}; choose one with --node"
    return None


def _devices(gk: Gatekeeper) -> int:
    for name, entry in sorted(gk.devices().items()):
        methods = ", ".join(str(m) for m in entry.get("methods", []))
        print(f"{name:<20} {entry.get('type', '?'):<18} {methods}")
    return 0


def _call(gk: Gatekeeper, args: argparse.Namespace) -> int:
    positional: list[Any] = []
    kwargs: dict[str, Any] = {}
    for item in args.args:
        key, sep, text = item.partition("=")
        if sep and key.isidentifier():
            kwargs[key] = _value(text)
        else:
            positional.append(_value(item))
    reply = gk.call(args.device, args.method, *positional, **kwargs)
    print(json.dumps(reply, indent=2))
    return 0


def _nodes(args: argparse.Namespace) -> int:
    """Every node whose retained status the broker keeps (and this user may read)."""
    from pi_mqtt_gpio.client.nodes import list_nodes

    try:
        nodes = list_nodes(args.host, args.port, username=args.user, password=args.password,
                           base_topic=args.base_topic, tls=args.cafile or args.tls,
                           protocol=4 if args.v311 else 5, wait=min(args.timeout, 1.5))
    except (OSError, GatekeeperError) as exc:
        print(f"pi-mqtt-gpio: {exc}", file=sys.stderr)
        return 2
    if not nodes:
        print("no gatekeeper nodes on this broker", file=sys.stderr)
        return 1
    for node in nodes:
        print(f"{node.node_id:<24} {node.status:<8} {node.version or '-':<10} "
              f"{node.devices if node.devices is not None else '-'} devices")
    return 0


def _lease(gk: Gatekeeper, args: argparse.Namespace) -> int:
    """A lease belongs to the connection that acquired it: ``acquire`` holds it (renewing)
    until Ctrl-C or ``--for`` seconds, then releases it; ``renew`` and ``release`` act on
    this connection's leases, or with ``--force`` on anyone's."""
    devices = args.devices or None
    if args.action == "status":
        print(json.dumps(gk.leases(), indent=2))
        return 0
    if args.action == "acquire":
        with gk.lease(devices, ttl=args.ttl) as held:
            how = f"for {args.hold:g} s" if args.hold is not None else "until Ctrl-C"
            print(f"lease {held.lease_id} on {_scope(devices)} held by {held.holder} {how} "
                  f"(ttl {held.ttl:g} s, renewed every {held.ttl / 3:g} s)", flush=True)
            if held.wait_broken(args.hold):
                return _broken(held)
        print("released")
        return 0
    kwargs: dict[str, Any] = {"ttl": args.ttl} if args.action == "renew" else {}
    if devices is not None:
        kwargs["devices"] = devices
    if args.lease_id:
        kwargs["lease_id"] = args.lease_id
    if args.force:
        kwargs["force"] = True
    reply = gk.result(gk.submit("", args.action, (), kwargs, topic=gk.topics.lease_call),
                      None, "lease", args.action)
    print(json.dumps(reply.get("result"), indent=2))
    return 0


def _scope(devices: Sequence[str] | None) -> str:
    return ", ".join(devices) if devices else "all devices"


def _broken(lease: Lease) -> int:
    print(f"pi-mqtt-gpio: lease {lease.lease_id} on {_scope(lease.devices)} lost: "
          f"{lease.lost.message if lease.lost else 'not renewed in time'}", file=sys.stderr)
    return 1


def _lease_run(gk: Gatekeeper, args: argparse.Namespace,
               commands: list[argparse.Namespace]) -> int:
    """Hold the lease on this connection while each command runs on it, in order; a lost
    lease ends a watch and the whole command with 1."""
    with gk.lease(args.devices, ttl=args.ttl) as held:
        print(f"lease {held.lease_id} on {_scope(args.devices)} held by {held.holder} "
              f"(ttl {held.ttl:g} s, renewed every {held.ttl / 3:g} s)", file=sys.stderr,
              flush=True)
        for command in commands:
            status = _command(gk, command, held.broken)  # a watch ends when the lease does
            if held.broken.is_set():
                return _broken(held)
            if status != 0:
                return status
    print(f"lease {held.lease_id} released", file=sys.stderr)
    return 0


def _watch(gk: Gatekeeper, device: str | None, stop: threading.Event) -> int:
    def show(kind: str) -> Any:
        def out(name: str, doc: State) -> None:
            if device is None or name == device:
                print(f"{name} {kind} {json.dumps(doc)}", flush=True)

        return out

    state = show("state")
    gk.add_state_listener(state)
    gk.add_event_listener(show("event"))
    # The retained states may have arrived before the listener: start with them.
    for name in sorted(gk.devices()) if device is None else [device]:
        try:
            state(name, gk.state(name, wait=1.0))
        except GatekeeperError:
            print(f"{name}: no state", file=sys.stderr)
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
