"""A sound card's mixer control as a device (``type: AlsaMixer``): a volume between ``min``
and ``max`` (``value``), and mute when the control has a switch. Changes made elsewhere
(``amixer set``, another program) come back as ALSA mixer events, not by polling: a thread
waits on the mixer's poll descriptors and publishes the new state.

Uses pyalsaaudio (the ``alsa`` extra: ``pip install pi-mqtt-gatekeeper[alsa]``, which needs
Debian's ``libasound2-dev`` to build). Under ``--simulate`` the control is simulated.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from typing import Annotated, Any, ClassVar

from pi_mqtt_gpio.errors import BadArgument, HardwareError
from pi_mqtt_gpio.server.devices.base import DeviceAdapter, DeviceConfig, Method, Param, number
from pi_mqtt_gpio.server.schema import NonEmpty, Range, section

__all__ = ["ADAPTERS", "AlsaMixerConfig", "control_problem"]


@section
class AlsaMixerConfig(DeviceConfig):
    control: Annotated[str, NonEmpty()]
    card: Annotated[int, Range(ge=0, le=31)] | Annotated[str, NonEmpty()] = 0  # index or name
    min: float = 0.0
    max: float = 100.0
    step: Annotated[float, Range(gt=0)] = 1.0
    unit: str | None = "%"

    def check(self) -> list[str]:
        if self.max <= self.min:
            return ["max must be greater than min"]
        return []


def _card_index(card: int | str) -> int:
    import alsaaudio

    if isinstance(card, int):
        return card
    names = alsaaudio.cards()
    if card in names:
        return int(names.index(card))
    raise HardwareError(f"no sound card named {card!r} (cards: {', '.join(names) or 'none'})")


def control_problem(config: AlsaMixerConfig) -> str | None:
    """Why the card or control cannot be opened (None: it can), for check-config."""
    try:
        import alsaaudio
    except ImportError:
        return ("pyalsaaudio is not installed: pip install 'pi-mqtt-gatekeeper[alsa]' "
                "(needs Debian's libasound2-dev)")
    try:
        index = _card_index(config.card)
        controls = alsaaudio.mixers(cardindex=index)
    except (HardwareError, alsaaudio.ALSAAudioError) as exc:
        return f"sound card {config.card!r}: {exc}"
    if config.control not in controls:
        return (f"card {config.card!r} has no mixer control {config.control!r} "
                f"(controls: {', '.join(controls) or 'none'})")
    return None


class _SimulatedMixer:
    """A mixer control in memory (``--simulate``)."""

    def __init__(self) -> None:
        self.volume = 50
        self.muted = False

    def getvolume(self) -> list[int]:
        return [self.volume]

    def setvolume(self, volume: int) -> None:
        self.volume = volume

    def getmute(self) -> list[int]:
        return [int(self.muted)]

    def setmute(self, mute: bool) -> None:
        self.muted = bool(mute)

    def switchcap(self) -> list[str]:
        return ["Playback Mute"]

    def close(self) -> None:
        pass


class AlsaMixerAdapter(DeviceAdapter):
    type_name = "AlsaMixer"
    Config: ClassVar[Any] = AlsaMixerConfig
    kind = "output"
    capabilities: ClassVar[tuple[str, ...]] = ("number", "volume")
    methods = {
        "value": Method("value", (Param("value", "float"),),
                        doc="Set the volume (between the config's min and max)."),
        "mute": Method("mute", doc="Mute the control (when it has a switch)."),
        "unmute": Method("unmute", doc="Unmute the control."),
        "state": Method("state", writes=False, doc="The current state."),
    }

    def catalogue(self) -> dict[str, Any]:
        cfg = self.config
        return {**super().catalogue(), "range": {"min": cfg.min, "max": cfg.max,
                                                 "step": cfg.step, "unit": cfg.unit,
                                                 "key": "value"}}

    def __init__(self, name: str, config: Any, *, simulate: bool, emit: Any) -> None:
        super().__init__(name, config, simulate=simulate, emit=emit)
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None

    # --- worker thread -------------------------------------------------------------------------
    def create(self, factory: Any) -> Any:
        if self.simulate:
            return _SimulatedMixer()
        try:
            import alsaaudio
        except ImportError as exc:
            raise HardwareError(f"{self.name}: {control_problem(self.config)}") from exc
        problem = control_problem(self.config)
        if problem is not None:
            raise HardwareError(problem)
        return alsaaudio.Mixer(control=self.config.control,
                               cardindex=_card_index(self.config.card))

    def wire(self) -> None:
        if self.simulate or not hasattr(self.device, "polldescriptors"):
            return
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._events, name=f"mixer-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _events(self) -> None:
        """Wait for ALSA mixer events (a change made anywhere) and publish the new state."""
        poller = select.poll()
        for fd, mask in self.device.polldescriptors():
            poller.register(fd, mask)
        poller.register(self._wake_r, select.POLLIN)
        last = None
        while True:
            ready = poller.poll()
            if any(fd == self._wake_r for fd, _ in ready):
                return
            try:
                self.device.handleevents()
                state = self.state()
            except Exception:  # the card went away: stop listening
                return
            if state != last:
                last = state
                self.emit(self.name, None, state)

    def _percent(self) -> float:
        values = self.device.getvolume()
        return float(sum(values) / len(values)) if values else 0.0

    def _has_switch(self) -> bool:
        """Whether the control has a playback mute switch (found out once)."""
        has = getattr(self, "_switch", None)
        if has is None:
            try:
                self.device.getmute()
                has = True
            except Exception:  # alsaaudio.ALSAAudioError: no playback switch capabilities
                has = False
            self._switch = has
        return bool(has)

    def state(self) -> dict[str, Any]:
        cfg = self.config
        percent = self._percent()
        value = cfg.min + (cfg.max - cfg.min) * percent / 100.0
        value = round(round(value / cfg.step) * cfg.step, 6)
        out: dict[str, Any] = {"value": value, "percent": round(percent, 2)}
        if self._has_switch():
            muted = bool(any(self.device.getmute()))
            out["muted"] = muted
            out["is_active"] = not muted and percent > 0
        else:
            out["is_active"] = percent > 0
        return out

    def do_value(self, value: float) -> None:
        cfg = self.config
        percent = (value - cfg.min) / (cfg.max - cfg.min) * 100.0
        self.device.setvolume(round(percent))

    def do_mute(self) -> None:
        if not self._has_switch():
            raise BadArgument(f"{self.config.control} has no mute switch")
        self.device.setmute(True)

    def do_unmute(self) -> None:
        if not self._has_switch():
            raise BadArgument(f"{self.config.control} has no mute switch")
        self.device.setmute(False)

    def safe(self) -> None:
        """A volume is left as it is (there is no safe volume to go to)."""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
            if self._thread is not None:
                self._thread.join(2)
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self.device is not None:
            self.device.close()

    # --- event loop ----------------------------------------------------------------------------
    def validate(self, method: str, kwargs: dict[str, Any]) -> None:
        cfg = self.config
        if method == "value" and not cfg.min <= kwargs["value"] <= cfg.max:
            raise BadArgument(f"value must be from {cfg.min:g} to {cfg.max:g}, "
                              f"got {kwargs['value']:g}")

    def predict(self, method: str, kwargs: dict[str, Any], current: Any) -> Any:
        return kwargs.get("value", current)

    def parse_set(self, payload: str) -> tuple[str, dict[str, Any]]:
        word = payload.strip().upper()
        if word in ("MUTE", "OFF"):
            return "mute", {}
        if word in ("UNMUTE", "ON"):
            return "unmute", {}
        value = number(word)
        if value is None:
            raise BadArgument(f"expected a volume from {self.config.min:g} to "
                              f"{self.config.max:g}, MUTE or UNMUTE, got {payload[:40]!r}")
        return "value", {"value": value}


ADAPTERS: tuple[type[DeviceAdapter], ...] = (AlsaMixerAdapter,)
