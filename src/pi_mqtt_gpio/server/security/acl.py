"""Authorisation: topic filters per role, deny wins (a broker hook answering allow / deny).

``{root}``, ``{username}`` and ``{client_id}`` are substituted per client. Every role also
reads its own reply prefix ``{root}/reply/<client_id>``, and nobody reads another client's
(``readable``). With a ``role_of`` resolver the role is looked up at every check, so that a
users file reloaded with SIGHUP takes effect for clients already connected (a removed user
may publish nothing, its pending Will included).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pi_mqtt_gpio.mqtt.hooks import BrokerHooks, ClientInfo, Decision
from pi_mqtt_gpio.mqtt.topic_tree import filter_covers, parse_shared, topic_matches
from pi_mqtt_gpio.server.config import RIGHTS, AuthConfig, RoleConfig
from pi_mqtt_gpio.topics import Topics

__all__ = ["AccessControl", "builtin_roles"]

_CACHE_MAX = 4096
ACCESS_PROPERTY = "gatekeeper-access"  # CONNECT asks, CONNACK answers (User Property)
_UNSAFE_ID_CHARS = "+#/"  # an id with these would widen a filter it is substituted into


def builtin_roles(ha_prefix: str = "homeassistant") -> dict[str, RoleConfig]:
    """admin: everything, with every right; operator: read the gatekeeper, command devices
    and leases; viewer: read only; homeassistant: what Home Assistant's MQTT integration
    needs. Every role also reads its own reply prefix (added in ``AccessControl``)."""
    return {
        "admin": RoleConfig(subscribe=["#"], publish=["#"], rights=list(RIGHTS)),  # type: ignore[arg-type]
        "operator": RoleConfig(
            subscribe=["{root}/#"],
            publish=["{root}/device/+/set", "{root}/device/+/call", "{root}/lease/call"],
        ),
        "viewer": RoleConfig(subscribe=["{root}/#"], publish=[]),
        "homeassistant": RoleConfig(
            subscribe=["{root}/#", f"{ha_prefix}/#"],
            publish=["{root}/device/+/set", f"{ha_prefix}/status"],
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

        def sub(filters: tuple[str, ...]) -> tuple[str, ...]:
            out = []
            for f in filters:
                if "{username}" in f and client.username is None:
                    continue  # anonymous clients have no user name to substitute
                if unsafe_ids and ("{username}" in f or "{client_id}" in f):
                    continue
                out.append(
                    f.replace("{root}", self.topics.root)
                    .replace("{username}", client.username or "")
                    .replace("{client_id}", client.client_id)
                )
            return tuple(out)

        reply = (f"{self.topics.reply_prefix('{client_id}')}/#",)
        expanded = _Role(sub(role.subscribe + reply), sub(role.publish), sub(role.deny),
                         role.rights)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = expanded
        return expanded

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
        if client.internal:
            return Decision.ALLOW
        role = self._expand(client)
        parsed = parse_shared(topic_filter)
        if role is None or parsed is None:
            return Decision.DENY
        plain = parsed[1]
        if any(filter_covers(d, plain) for d in role.deny):
            return Decision.DENY
        replies = f"{self.topics.replies}#"
        own_prefix = self.topics.reply_prefix(client.client_id)
        own_ok = not unsafe_client_id(client.client_id)
        if filter_covers(replies, plain) and not (own_ok and (
                filter_covers(f"{own_prefix}/#", plain) or plain == own_prefix)):
            return Decision.DENY  # someone else's replies (a wider filter is read-filtered)
        if any(filter_covers(s, plain) for s in role.subscribe):
            return Decision.ALLOW
        aliases = self.aliases
        if aliases is not None and any(topic_matches(plain, t) and self._alias_readable(role, t)
                                       for t in aliases.all_topics()):
            return Decision.ALLOW  # what it may read there is delivered (``readable``)
        return Decision.DENY

    def _alias_readable(self, role: _Role, topic: str) -> bool:
        """A topic under the alias prefix: one that stands for a topic of the node's own is
        read as that one (or by a grant of the topic itself); any other by the grant."""
        aliases = self.aliases
        mapped = aliases.acl_topic(topic) if aliases is not None else None
        if mapped is not None and any(topic_matches(d, mapped) for d in role.deny):
            return False
        if any(topic_matches(d, topic) for d in role.deny):
            return False
        if mapped is not None and any(topic_matches(s, mapped) for s in role.subscribe):
            return True
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
        """Reply prefixes, and the fixed start of every deny filter: a subscription that
        overlaps a deny filter without lying inside it (``{root}/#`` with a deny of
        ``{root}/device/safe/#``) is granted, and the denied topics are held back at
        delivery."""
        prefixes = {self.topics.replies}
        if self.aliases is not None:
            prefixes.add(self.aliases.prefix + "/")
        for role in self.roles.values():
            for deny in role.deny:
                text = deny.replace("{root}", self.topics.root)
                cut = min((i for i, c in enumerate(text) if c in "+#{"), default=len(text))
                prefixes.add(text[:cut])
        return tuple(sorted(prefixes))

    def readable(self, client: ClientInfo, topic: str) -> bool:
        """Replies are for their requester only: a ``{root}/#`` reader (a dashboard, another
        user, even an admin) does not see other clients' replies. Nobody receives a topic
        its role denies, whatever filter it subscribed with."""
        if client.internal:
            return True
        role = self._expand(client)
        if role is None or any(topic_matches(d, topic) for d in role.deny):
            return False
        if self.aliases is not None and topic.startswith(self.aliases.prefix + "/"):
            return self._alias_readable(role, topic)
        if not topic.startswith(self._reply_root):
            return True
        if unsafe_client_id(client.client_id):
            return False
        prefix = self.topics.reply_prefix(client.client_id)
        return topic == prefix or topic.startswith(prefix + "/")
