"""The installed package's version (one place for both CLIs and the catalogue)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["package_version"]


def package_version() -> str:
    try:
        return version("pi-mqtt-gatekeeper")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"
