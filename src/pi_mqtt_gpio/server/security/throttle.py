"""Login throttling: failed logins slow down further attempts (sans-io, time passed in).

Failures are counted twice: per source address and per user name. An attempt is accounted
when it arrives, before its password is checked, so parallel connections from one address
queue behind each other instead of multiplying a guesser's rate:

- per address, after ``free`` failures (attempts still being checked count as failures
  until they are known), each attempt is given a turn at least ``base * 2**(n - free)``
  seconds (at most ``cap``) after the previous turn of that address;
- per user name, after ``free`` failures, each attempt for that user waits the same
  back-off (not serialised, so that a guesser elsewhere cannot lock the real user out);
- an attempt whose turn would come later than ``max_wait`` seconds from now is refused at
  once, without a password check (the client sees "server busy" and may retry later);
- a successful login resets only that user's count: the address keeps its failures until
  it has been quiet for ``forget_after`` seconds, so one good login (a guesser's own viewer
  account, say) does not buy another round of free guesses.

``cap`` and ``max_wait`` stay under the connect timeout (5 s), so the right password still
gets in from a throttled address (behind the same NAT as the guesser) when its turn comes.
Memory is bounded: at most ``max_keys`` addresses and user names are remembered.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LoginThrottle", "Ticket"]


@dataclass(slots=True)
class _Record:
    failures: int = 0
    pending: int = 0  # attempts admitted and not yet decided
    last: float = 0.0  # last failure or attempt
    next_turn: float = 0.0  # the earliest time the next throttled attempt may be checked


@dataclass(slots=True)
class Ticket:
    """One admitted attempt: check the password at ``at`` (loop time), then report."""

    address: str
    user: str | None
    at: float
    done: bool = False
    turn_before: float | None = None  # the address's next turn before this reservation
    turn_after: float | None = None  # ... and after it


class LoginThrottle:
    def __init__(self, *, free: int = 3, base: float = 0.5, cap: float = 4.0,
                 max_wait: float = 4.0, forget_after: float = 600.0,
                 max_keys: int = 10_000) -> None:
        self.free, self.base, self.cap, self.max_wait = free, base, cap, max_wait
        self.forget_after = forget_after
        self.max_keys = max_keys
        self._addresses: dict[str, _Record] = {}
        self._users: dict[str, _Record] = {}

    @staticmethod
    def address(peer: str) -> str:
        """The address part of ``host:port`` (``::1:5000`` -> ``::1``)."""
        return peer.rsplit(":", 1)[0] if ":" in peer else peer

    def _backoff(self, count: int) -> float:
        if count < self.free:
            return 0.0
        return float(min(self.cap, self.base * 2 ** (count - self.free)))

    def _record(self, table: dict[str, _Record], key: str, now: float) -> _Record:
        rec = table.get(key)
        if rec is not None and not rec.pending and now - rec.last > self.forget_after:
            del table[key]
            rec = None
        if rec is None:
            if len(table) >= self.max_keys:
                idle = [k for k, r in table.items() if not r.pending]
                if idle:
                    del table[min(idle, key=lambda k: table[k].last)]
            rec = table[key] = _Record(last=now)
        return rec

    def delay(self, peer: str, now: float, user: str | None = None) -> float:
        """How long a new attempt from ``peer`` for ``user`` would wait (no reservation)."""
        addr = self._addresses.get(self.address(peer))
        if addr is not None and not addr.pending and now - addr.last > self.forget_after:
            addr = None
        count = addr.failures + addr.pending if addr is not None else 0
        wait = 0.0
        if count >= self.free:
            turn = addr.next_turn if addr is not None else 0.0
            wait = max(now + self._backoff(count), turn) - now
        if user is not None:
            rec = self._users.get(user)
            if rec is not None and not rec.pending and now - rec.last > self.forget_after:
                rec = None
            if rec is not None:
                wait = max(wait, self._backoff(rec.failures + rec.pending))
            elif self.free == 0:
                wait = max(wait, self._backoff(0))
        return wait

    def reserve(self, peer: str, user: str | None, now: float) -> Ticket | None:
        """Admit an attempt and give it its turn; None when the turn is too far away."""
        address = self.address(peer)
        at = now + self.delay(peer, now, user)
        if at - now > self.max_wait:
            return None
        addr = self._record(self._addresses, address, now)
        ticket = Ticket(address, user, at)
        if addr.failures + addr.pending >= self.free:
            ticket.turn_before = addr.next_turn
            addr.next_turn = ticket.turn_after = at + self._backoff(addr.failures + addr.pending + 1)
        addr.pending += 1
        addr.last = now
        if user is not None:
            rec = self._record(self._users, user, now)
            rec.pending += 1
            rec.last = now
        return ticket

    def _settle(self, ticket: Ticket) -> tuple[_Record | None, _Record | None]:
        if ticket.done:
            return None, None
        ticket.done = True
        addr = self._addresses.get(ticket.address)
        user = self._users.get(ticket.user) if ticket.user is not None else None
        for rec in (addr, user):
            if rec is not None and rec.pending:
                rec.pending -= 1
        return addr, user

    def failed(self, ticket: Ticket, now: float) -> int:
        """The password was wrong; returns the address's failure count."""
        addr, user = self._settle(ticket)
        for rec in (addr, user):
            if rec is not None:
                rec.failures += 1
                rec.last = now
        return addr.failures if addr is not None else 0

    def succeeded(self, ticket: Ticket) -> None:
        """The right password: the user's count starts again; the address's stays."""
        _addr, user = self._settle(ticket)
        if user is not None and ticket.user is not None:
            self._users.pop(ticket.user, None)

    def abandoned(self, ticket: Ticket) -> None:
        """The connection went away before its password was checked: nothing was learned,
        and its turn goes back to the address if nobody queued behind it."""
        addr, _user = self._settle(ticket)
        if addr is not None and ticket.turn_before is not None \
                and addr.next_turn == ticket.turn_after:
            addr.next_turn = ticket.turn_before

    def __len__(self) -> int:
        return len(self._addresses) + len(self._users)
