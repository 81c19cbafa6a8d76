"""The AsyncAPI 3.0 document: valid under the official JSON Schema (vendored in
tests/fixtures), for the demo, an every-type config and a fleet node; its call payload
schemas accept what the gatekeeper accepts and refuse what it refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pi_mqtt_gpio.server.asyncapi import asyncapi
from pi_mqtt_gpio.server.config_loader import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "tests" / "fixtures" / "asyncapi-3.0.0.schema.json").read_text())


def validate(doc: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(SCHEMA).validate(doc)


def test_the_demo_document_is_valid_and_published_in_docs() -> None:
    doc = asyncapi(load_config(ROOT / "deploy" / "demo.yaml"), simulate=True)
    validate(doc)
    published = json.loads((ROOT / "docs" / "asyncapi-demo.json").read_text())
    assert published == json.loads(json.dumps(doc)), ("docs/asyncapi-demo.json is stale: "
                                                      "pi-mqtt-gatekeeper asyncapi "
                              "--config deploy/demo.yaml > docs/asyncapi-demo.json")
    assert doc["channels"]["screen_call"]["address"] == "gatekeeper/demo/device/screen/call"


def test_a_fleet_node_documents_the_user_name_level() -> None:
    config = parse_config("""
node_id: kitchen
broker: {mode: external, external: {hosts: ["b1:1883", "b2:1883"], acl_probe: false}}
devices: {lamp: {type: LED, pin: 17}}
""")
    doc = asyncapi(config)
    validate(doc)
    assert doc["channels"]["lamp_call"]["address"].endswith("/call/{username}")
    assert "username" in doc["channels"]["lamp_call"]["parameters"]
    assert [s["host"] for s in doc["servers"].values()] == ["b1:1883", "b2:1883"]


def test_call_schemas_follow_the_method_specs() -> None:
    doc = asyncapi(load_config(ROOT / "deploy" / "demo.yaml"), simulate=True)
    cover = doc["components"]["schemas"]["Call_Cover"]
    good = {"method": "set_position", "kwargs": {"position": 40}}
    jsonschema.validate(good, cover)
    for bad in ({"method": "set_position", "kwargs": {"position": 140}},
                {"method": "set_position", "kwargs": {}},
                {"method": "fly"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, cover)


def test_the_cli_prints_it() -> None:
    out = subprocess.run([sys.executable, "-m", "pi_mqtt_gpio.server.main", "asyncapi",
                          "--config", str(ROOT / "deploy" / "demo.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    validate(json.loads(out.stdout))


def test_the_validator_does_refuse_invalid_documents() -> None:
    doc = asyncapi(parse_config("devices: {lamp: {type: LED, pin: 17}}"))
    broken = json.loads(json.dumps(doc))
    broken["operations"]["send_lamp_call"]["action"] = "publish"  # AsyncAPI 2 wording
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate({"asyncapi": "3.0.0"})  # no info
