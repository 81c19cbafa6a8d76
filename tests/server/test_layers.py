"""The package's layers: a module imports only from its own layer or the layers below it.

Every import counts, read with ``ast`` from the source: those at the top of a module, those
inside a function (a "lazy" import works around a cycle; it does not remove the
dependency) and those under ``if TYPE_CHECKING:``. A new module must be given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pi_mqtt_gpio

PACKAGE = Path(pi_mqtt_gpio.__file__).parent
P = "pi_mqtt_gpio."

# Lowest first. A module belongs to the layer of the longest prefix naming it: the module or
# package itself, or a name ending in "_" that its name starts with.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("pi_mqtt_gpio", P + "errors", P + "payloads", P + "topics", P + "version",
              P + "terminal",
              P + "server", P + "server.jsonscan")),
    # The MQTT protocol and broker core, and the HTTP/WebSocket helpers of the listeners.
    ("mqtt", (P + "mqtt", P + "server.web")),
    # YAML -> typed sections and their checks; told the device types by the layers above.
    ("config", (P + "server.schema", P + "server.sections", P + "server.config")),
    ("devices/pins", (P + "server.devices", P + "server.pins")),
    # What runs the hardware and keeps it safe, the state mirror, the broker server and
    # what persists; access control and leases.
    ("hardware/safety/guards", (P + "server.hardware", P + "server.pin_factory",
                                P + "server.gpio_lines", P + "server.safety", P + "server.guards",
                                P + "server.twin", P + "server.watchdog",
                                P + "server.persistence", P + "server.security",
                                P + "server.broker", P + "server.broker_store",
                                P + "server.broker_sys", P + "server.fdlimit")),
    # What the daemon is made of, and the config read with what they know.
    ("rpc/twin/bindings/homeassistant/compat", (
        P + "server.rpc_", P + "server.bindings", P + "server.homeassistant",
        P + "server.compat", P + "server.covers", P + "server.history",
        P + "server.aclprobe", P + "server.uplink", P + "server.asyncapi",
        P + "server.preflight", P + "server.config_loader")),
    ("daemon", (P + "server.daemon", P + "server.external", P + "server.health")),
    # The commands: the gatekeeper's, and the client library with its CLI (which speaks to
    # a gatekeeper over MQTT and imports nothing of the server).
    ("main", (P + "server.main", P + "client")),
]

# Packages whose modules do not share their layer: each of those is given its own.
PACKAGES = ("pi_mqtt_gpio", P + "server")


def _layer_of(module: str) -> int:
    best, found = -1, None
    for index, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = (module.startswith(prefix + ".") and prefix not in PACKAGES) or (
                prefix.endswith("_") and module.startswith(prefix))  # rpc_: rpc_handler, ...
            if (module == prefix or inside) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{module} has no layer: give it one in LAYERS"
    return found


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("pi_mqtt_gpio", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """Every module of the package that ``module`` imports (with the line), at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            # "from pkg import module" imports that module
            out.extend((f"{target}.{alias.name}", node.lineno) for alias in node.names)
    modules = _modules()
    return [(name, line) for name, line in out if name in modules]


def _upward() -> list[str]:
    found = []
    for module, path in _modules().items():
        own = _layer_of(module)
        for target, line in _imports(module, path):
            other = _layer_of(target)
            if other > own:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} "
                             f"({LAYERS[own][0]}) imports {target} ({LAYERS[other][0]})")
    return found


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert _upward() == []


def test_every_module_has_a_layer() -> None:
    for module in _modules():
        _layer_of(module)


def test_an_upward_import_is_found(tmp_path: Path) -> None:
    """The check itself: a lazy import of the daemon inside a function of the config layer
    is reported (the way the old workarounds hid their dependency)."""
    source = tmp_path / "config.py"
    source.write_text("def f():\n    from pi_mqtt_gpio.server.daemon import run\n")
    targets = [name for name, _line in _imports(P + "server.config", source)]
    assert P + "server.daemon" in targets
    assert _layer_of(P + "server.daemon") > _layer_of(P + "server.config")


def test_the_client_imports_nothing_of_the_server() -> None:
    modules = _modules()
    for module, path in modules.items():
        if module.startswith(P + "client"):
            for target, line in _imports(module, path):
                assert target.startswith(P + "client") or _layer_of(target) == 0, \
                    f"{module}:{line} imports {target}"
