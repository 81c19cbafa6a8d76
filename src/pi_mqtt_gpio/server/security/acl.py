"""Authorisation: topic filters per role, deny wins (a broker hook answering allow / deny).

``{root}``, ``{username}`` and ``{client_id}`` are substituted per client. Every role also
reads its own reply prefix ``{root}/reply/<client_id>``, and nobody reads another client's.
With a ``role_of`` resolver the role is looked up at every check, so that a users file
reloaded with SIGHUP takes effect for clients already connected (a removed user may publish
nothing, its pending Will included).

Reading has one rule, ``_may_read`` (a role may read a topic): its subscribe filters, its
deny filters, the reply prefixes, and mqtt-io's topics read as the device topic they stand
for. A SUBSCRIBE is granted only when its filter lies within the role's subscribe filters
(or within the mqtt-io prefix); every topic inside such a filter that the rule refuses lies
under ``read_protected()``, where the broker asks ``readable`` (the same rule) for every
delivery, retained and queued ones included. A filter that merely overlaps something
readable (``#`` beside mqtt-io's topics) is refused. The device catalogue is rewritten per
reader (``reader_payload``): it lists only the devices whose state the reader may read;
an audit entry reaches only readers that may read the state of every device it names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pi_mqtt_gpio.mqtt.hooks import BrokerHooks, ClientInfo, Decision
from pi_mqtt_gpio.mqtt.topic_tree import filter_covers, parse_shared, topic_matches
from pi_mqtt_gpio.server.config import RIGHTS, AuthConfig, RoleConfig
from pi_mqtt_gpio.topics import HomeAssistantTopics, Topics

__all__ = ["AccessControl", "builtin_roles"]

_CACHE_MAX = 4096
_VIEWS_MAX = 256  # catalogue views kept (one per distinct set of read filters)
ACCESS_PROPERTY = "gatekeeper-access"  # CONNECT asks, CONNACK answers (User Property)
_UNSAFE_ID_CHARS = "+#/"  # an id with these would widen a filter it is substituted into


def builtin_roles(ha_prefix: str = "homeassistant") -> dict[str, RoleConfig]:
    """admin: everything (the broker's ``$SYS/#`` statistics too: ``#`` does not
    cover them, MQTT-4.7.2-1), with every right; operator: read the gatekeeper, command devices
    and leases; viewer: read only; homeassistant: what Home Assistant's MQTT integration
    needs. Every role also reads its own reply prefix (added in ``AccessControl``)."""
    return {
        "admin": RoleConfig(subscribe=["#", "$SYS/#"], publish=["#"],
                            rights=list(RIGHTS)),  # type: ignore[arg-type]
        "operator": RoleConfig(
            subscribe=["{root}/#"],
            publish=["{root}/device/+/set", "{root}/device/+/call", "{root}/lease/call"],
        ),
        "viewer": RoleConfig(subscribe=["{root}/#"], publish=[]),
        "homeassistant": RoleConfig(
            subscribe=["{root}/#", Topics.below(ha_prefix)],
            publish=["{root}/device/+/set", HomeAssistantTopics(ha_prefix).status],
        ),
    }


def unsafe_client_id(client_id: str) -> bool:
    """An id that cannot name a reply prefix of its own (it would cover others')."""
    return any(c in client_id for c in _UNSAFE_ID_CHARS)


class Aliases(Protocol):
    """Another program's topics for this node's devices (mqtt-io's): each stands for a
    topic of the node's own, and is authorised as that one."""

    prefix: str

    def acl_topic(self, topic: str) -> str | None: ...

    def all_topics(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class _Role:
    subscribe: tuple[str, ...]
    publish: tuple[str, ...]
    deny: tuple[str, ...]
    rights: frozenset[str] = frozenset()
    reply: str | None = None  # the client's own reply prefix (None: an id that cannot have one)


class AccessControl(BrokerHooks):
    def __init__(self, auth: AuthConfig, topics: Topics, *,
                 role_of: Callable[[str | None], str | None] | None = None,
                 ha_prefix: str = "homeassistant", aliases: Aliases | None = None) -> None:
        roles = builtin_roles(ha_prefix)
        roles.update(auth.roles)
        self.roles = {
            name: _Role(tuple(r.subscribe), tuple(r.publish), tuple(r.deny), frozenset(r.rights))
            for name, r in roles.items()
        }
        self.topics = topics
        self._reply_root = topics.replies
        self.role_of = role_of
        self._cache: dict[tuple[str, str | None, str], _Role] = {}
        self.aliases = aliases
        self._alias_root = aliases.prefix + "/" if aliases is not None else None
        self._catalogue = topics.devices
        # The catalogue as published, and its view per set of read filters.
        self._catalogue_src: bytes | None = None
        self._catalogue_views: dict[tuple[tuple[str, ...], tuple[str, ...]], bytes] = {}
        self._audit = topics.audit
        # The last audit entry read, and the devices it names.
        self._audit_src: bytes | None = None
        self._audit_names: tuple[str, ...] = ()

    def current_role(self, client: ClientInfo) -> str | None:
        """The client's role now: as authenticated, or as the users are after a reload."""
        if self.role_of is None or client.role is None:
            return client.role
        return self.role_of(client.username)

    def _expand(self, client: ClientInfo) -> _Role | None:
        role_name = self.current_role(client)
        if role_name is None:
            return None
        key = (client.client_id, client.username, role_name)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        role = self.roles.get(role_name)
        if role is None:
            return None
        unsafe_ids = unsafe_client_id((client.username or "") + client.client_id)

        def sub(filters: tuple[str, ...], widen: bool = False) -> tuple[str, ...]:
            """Placeholders filled in; a filter whose placeholder cannot be filled (no user
            name, an id with wildcards) is dropped, or for a deny filter (``widen``) has
            that level widened to ``+``: deny wins."""
            out = []
            for f in filters:
                missing = ("{username}" in f and client.username is None) or \
                    (unsafe_ids and ("{username}" in f or "{client_id}" in f))
                if missing:
                    if not widen:
                        continue
                    f = "/".join("+" if "{username}" in level or "{client_id}" in level
                                 else level for level in f.split("/"))
                out.append(
                    f.replace("{root}", self.topics.root)
                    .replace("{username}", client.username or "")
                    .replace("{client_id}", client.client_id)
                )
            return tuple(out)

        reply = None if unsafe_client_id(client.client_id) \
            else self.topics.reply_prefix(client.client_id)
        expanded = _Role(sub(role.subscribe), sub(role.publish), sub(role.deny, widen=True),
                         role.rights, reply)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = expanded
        return expanded

    def owner_exists(self, client: ClientInfo) -> bool:
        """A stored session's user still has a role (was not removed from the users)."""
        return client.internal or self.current_role(client) is not None

    def has_right(self, client: ClientInfo, right: str) -> bool:
        """Whether the client's role (as it is now) holds ``right`` (simulate,
        force_release, manage). Rights are named by the role's config, never by its name."""
        if client.internal:
            return True
        role = self._expand(client)
        return role is not None and right in role.rights

    def authorize_publish(self, client: ClientInfo, topic: str, qos: int, retain: bool) -> Decision:
        if client.internal:
            return Decision.ALLOW
        role = self._expand(client)
        if role is None:
            return Decision.DENY
        mapped = self.aliases.acl_topic(topic) if self.aliases is not None else None
        if mapped is not None:
            # A command on mqtt-io's topics is the device's own set: the role's right to
            # that decides, whatever it may publish under the other program's prefix.
            if any(topic_matches(d, topic) or topic_matches(d, mapped) for d in role.deny):
                return Decision.DENY
            return Decision.ALLOW if any(topic_matches(p, mapped) for p in role.publish) \
                else Decision.DENY
        if any(topic_matches(d, topic) for d in role.deny):
            return Decision.DENY
        if any(topic_matches(p, topic) for p in role.publish):
            return Decision.ALLOW
        return Decision.DENY

    def authorize_subscribe(self, client: ClientInfo, topic_filter: str, qos: int) -> Decision:
        """Granted when every topic the filter matches is readable (``_may_read``) or lies
        under ``read_protected()``, where each delivery is checked by that same rule. A
        refusal is the SUBACK's 0x87 Not authorized (5.0) / 0x80 Failure (3.1.1)."""
        if client.internal:
            return Decision.ALLOW
        role = self._expand(client)
        parsed = parse_shared(topic_filter)
        if role is None or parsed is None:
            return Decision.DENY
        plain = parsed[1]
        if "+" not in plain and "#" not in plain:
            return Decision.ALLOW if self._may_read(role, plain) else Decision.DENY
        return Decision.ALLOW if self._may_subscribe(role, plain) else Decision.DENY

    def _may_subscribe(self, role: _Role, plain: str) -> bool:
        """A wildcard filter: within the role's subscribe filters (what it holds under a
        deny filter, the reply prefixes or mqtt-io's prefix is checked per delivery), or
        within mqtt-io's prefix when something there is readable (every delivery there is
        checked). Overlapping something readable is not enough: ``#`` is not granted to a
        role that may read ``{root}/#`` because the node's mqtt-io mirrors match it too."""
        if any(filter_covers(d, plain) for d in role.deny):
            return False  # nothing in it could be delivered
        if filter_covers(self._reply_root + "#", plain):
            return role.reply is not None and filter_covers(Topics.below(role.reply), plain)
        if any(filter_covers(s, plain) for s in role.subscribe):
            return True
        aliases = self.aliases
        if aliases is not None and self._alias_root is not None \
                and filter_covers(self._alias_root + "#", plain):
            return any(topic_matches(plain, t) and self._may_read(role, t)
                       for t in aliases.all_topics())
        return False

    def _may_read(self, role: _Role, topic: str) -> bool:
        """The read rule: whether ``role`` may receive a message on ``topic``. Deny wins;
        replies are their requester's only (a ``#`` reader, even an admin, does not get
        other clients'); one of mqtt-io's topics is read as the device topic it stands
        for and as nothing else; any other topic by the role's subscribe filters."""
        if any(topic_matches(d, topic) for d in role.deny):
            return False
        if topic.startswith(self._reply_root):
            own = role.reply
            return own is not None and Topics.within(topic, own)
        if self._alias_root is not None and topic.startswith(self._alias_root):
            assert self.aliases is not None
            mapped = self.aliases.acl_topic(topic)
            if mapped is not None:
                if any(topic_matches(d, mapped) for d in role.deny):
                    return False
                topic = mapped
        return any(topic_matches(s, topic) for s in role.subscribe)

    def response_information(self, client: ClientInfo) -> str | None:
        if unsafe_client_id(client.client_id):
            return None
        return self.topics.reply_prefix(client.client_id)

    def connack_user_properties(self, client: ClientInfo,
                                asked: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A client that sends the User Property ``gatekeeper-access`` in CONNECT (the
        dashboard does) learns its own access in CONNACK: role, rights and the publish and
        deny filters as they apply to it, so that it can disable what it may not do instead
        of letting it fail. Only its own access; nothing about other users."""
        if client.internal or not any(name == ACCESS_PROPERTY for name, _ in asked):
            return []
        role = self._expand(client)
        access = {"username": client.username, "client_id": client.client_id,
                  "role": self.current_role(client) if role is not None else None,
                  "rights": sorted(role.rights) if role is not None else [],
                  "publish": list(role.publish) if role is not None else [],
                  "deny": list(role.deny) if role is not None else [],
                  "reply": None if unsafe_client_id(client.client_id)
                  else self.topics.reply_prefix(client.client_id)}
        return [(ACCESS_PROPERTY, json.dumps(access, separators=(",", ":")))]

    def read_protected(self) -> tuple[str, ...]:
        """Where a granted subscription may hold topics the read rule refuses, so that the
        broker asks ``readable`` for each delivery there: the reply prefixes, mqtt-io's
        prefix, the fixed start of every deny filter (``{root}/#`` with a deny of
        ``{root}/device/safe/#`` is granted, the denied topics are held back at delivery),
        the catalogue (rewritten per reader, ``reader_payload``) and the audit topic (an
        entry only to readers of the devices it names). The broker checks a prefix ending in
        ``/`` on its parent topic too (``{root}/device/safe/#`` matches
        ``{root}/device/safe``, MQTT-4.7.1-2)."""
        prefixes = {self.topics.replies, self._catalogue, self._audit}
        if self._alias_root is not None:
            prefixes.add(self._alias_root)
        for role in self.roles.values():
            for deny in role.deny:
                text = deny.replace("{root}", self.topics.root)
                cut = min((i for i, c in enumerate(text) if c in "+#{"), default=len(text))
                prefixes.add(text[:cut])
        return tuple(sorted(prefixes))

    def readable(self, client: ClientInfo, topic: str) -> bool:
        """The read rule for one delivery (``_may_read``), the one SUBSCRIBE is granted by."""
        if client.internal:
            return True
        role = self._expand(client)
        return role is not None and self._may_read(role, topic)

    def reader_payload(self, client: ClientInfo, topic: str, payload: bytes) -> bytes | None:
        """The device catalogue lists only the devices whose state topic the reader may
        read; a reader that may read them all gets the catalogue as published. One view per
        set of read filters, made again when the catalogue changes. An audit entry is
        delivered (None: not) only to a reader that may read the state of every device it
        names."""
        if client.internal or (topic != self._catalogue and topic != self._audit):
            return payload
        role = self._expand(client)
        if role is None:
            return payload if topic == self._catalogue else None
        if topic == self._audit:
            if payload is not self._audit_src and payload != self._audit_src:
                self._audit_src = payload
                self._audit_names = self._audit_devices(payload)
            return payload if all(self._may_read(role, self.topics.device(name, "state"))
                                  for name in self._audit_names) else None
        if payload is not self._catalogue_src and payload != self._catalogue_src:
            self._catalogue_src = payload
            self._catalogue_views.clear()
        key = (role.subscribe, role.deny)
        view = self._catalogue_views.get(key)
        if view is None:
            view = self._catalogue_view(role, payload)
            if len(self._catalogue_views) >= _VIEWS_MAX:
                self._catalogue_views.clear()
            self._catalogue_views[key] = view
        return view

    def _catalogue_view(self, role: _Role, payload: bytes) -> bytes:
        try:
            doc = json.loads(payload)
        except ValueError:
            return payload
        devices = doc.get("devices") if isinstance(doc, dict) else None
        if not isinstance(devices, list):
            return payload
        shown = [entry for entry in devices
                 if (topic := self._state_topic(entry)) is None or self._may_read(role, topic)]
        if len(shown) == len(devices):
            return payload
        doc["devices"] = shown
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()

    @staticmethod
    def _audit_devices(payload: bytes) -> tuple[str, ...]:
        """The devices an audit entry names: its ``device`` (``lease`` is the lease call,
        not a device), the ``devices`` of a lease call and of a lost lease."""
        try:
            entry = json.loads(payload)
        except ValueError:
            return ()
        if not isinstance(entry, dict):
            return ()
        names = []
        device = entry.get("device")
        if isinstance(device, str) and device != "lease":
            names.append(device)
        for holder in (entry.get("kwargs"), entry.get("lease")):
            listed = holder.get("devices") if isinstance(holder, dict) else None
            if isinstance(listed, list):
                names.extend(name for name in listed if isinstance(name, str))
        return tuple(names)

    def _state_topic(self, entry: object) -> str | None:
        """A catalogue entry's state topic (from its name when it names none)."""
        if isinstance(entry, dict):
            topic = entry.get("state_topic")
            if isinstance(topic, str):
                return topic
            name = entry.get("name")
            if isinstance(name, str):
                return self.topics.device(name, "state")
        return None
