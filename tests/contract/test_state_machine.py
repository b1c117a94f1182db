"""A stateful property test (Hypothesis) of the public API on every backend, checked
against a model of who holds what. Several owners (separate backend instances), several
keys, long ttls (nothing expires during a run)."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from django_locks import locks
from django_locks.exceptions import LockNotHeldError, LockTimeoutError
from tests import proof

#: Hermetic: also in the unit tier (scripts/test --unit), on MemoryLock and LocMemCache.
pytestmark = pytest.mark.unit

KEYS = ["a", "b", "Ä c"]
OWNERS = range(3)
TTL = 120_000


#: Modes an acquisition draws: exclusive, shared, semaphores of 2 and 3.
MODES = [{}, {"shared": True}, {"limit": 2}, {"limit": 3}]


def admitted(holders: list[Holder], mode: dict) -> bool:
    """The admission rule of docs/contract.md, written down independently of the code."""
    if mode.get("shared"):
        return all(h.shared for h in holders)
    return len(holders) < mode.get("limit", 1)


class Holder:
    def __init__(self, owner: int, token: str, shared: bool) -> None:
        self.owner, self.token, self.shared = owner, token, shared


def machine_for(alias: str) -> type[RuleBasedStateMachine]:
    class LockModel(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            self.owners = [locks.create_connection(alias) for _ in OWNERS]
            self.backend = self.owners[0]
            for key in KEYS:
                self.backend.force_release(key)
            self.holders: dict[str, list[Holder]] = {key: [] for key in KEYS}
            self.fencing: dict[str, int] = {}
            self.leases: dict[str, object] = {}  # token -> Lease
            self.lost_leases: list[object] = []

        def _gone(self, key: str, token: str | None = None) -> None:
            """Holder ``token`` (every holder, if None) of ``key`` is released."""
            for holder in list(self.holders[key]):
                if token is None or holder.token == token:
                    self.holders[key].remove(holder)
                    if holder.token in self.leases:
                        self.lost_leases.append(self.leases.pop(holder.token))

        def _took(self, owner: int, key: str, token: str, fencing_token: int, shared: bool) -> None:
            assert fencing_token > self.fencing.get(key, 0)
            self.fencing[key] = fencing_token
            self.holders[key].append(Holder(owner, token, shared))

        def _took_by_try(self, owner: int, key: str) -> None:
            known = {h.token for h in self.holders[key]}
            (info,) = [i for i in self.backend.get_holders(key) if i.token not in known]
            assert not info.shared and info.limit == 1
            self._took(owner, key, info.token, info.fencing_token, False)

        @rule(owner=st.sampled_from(OWNERS), key=st.sampled_from(KEYS))
        def try_acquire(self, owner: int, key: str) -> None:
            got = self.owners[owner].try_acquire_lock("sm", key, TTL)
            assert got == admitted(self.holders[key], {})
            if got:
                self._took_by_try(owner, key)

        @rule(owner=st.sampled_from(OWNERS), key=st.sampled_from(KEYS))
        def acquire(self, owner: int, key: str) -> None:
            if not admitted(self.holders[key], {}):
                with pytest.raises(LockTimeoutError):
                    self.owners[owner].acquire_lock("sm", key, TTL, 0)
            else:
                self.owners[owner].acquire_lock("sm", key, TTL, 0)
                self._took_by_try(owner, key)

        @rule(owner=st.sampled_from(OWNERS), key=st.sampled_from(KEYS))
        def release(self, owner: int, key: str) -> None:
            mine = [h for h in self.holders[key] if h.owner == owner]
            if len(mine) == 1:  # also a lock taken as a Lease by this owner
                self.owners[owner].release_lock("sm", key)
                self._gone(key, mine[0].token)
            elif mine:
                with pytest.raises(ValueError, match="pass owner=TOKEN"):
                    self.owners[owner].release_lock("sm", key)
            else:
                with pytest.raises(LockNotHeldError):
                    self.owners[owner].release_lock("sm", key)

        @rule(owner=st.sampled_from(OWNERS), key=st.sampled_from(KEYS), data=st.data())
        def owner_release(self, owner: int, key: str, data) -> None:
            """Any one holder, by its token, from any owner; a wrong token touches nothing."""
            holders = self.holders[key]
            if holders and data.draw(st.booleans()):
                token = data.draw(st.sampled_from([h.token for h in holders]))
                self.owners[owner].release_lock("sm", key, owner=token)
                self._gone(key, token)
            else:
                with pytest.raises(LockNotHeldError):
                    self.owners[owner].release_lock("sm", key, owner=secrets.token_hex(16))

        @rule(owner=st.sampled_from(OWNERS), key=st.sampled_from(KEYS))
        def force_release(self, owner: int, key: str) -> None:
            assert self.owners[owner].force_release(key) == bool(self.holders[key])
            self._gone(key)

        @rule(owner=st.sampled_from(OWNERS), key=st.sampled_from(KEYS), mode=st.sampled_from(MODES))
        def take_lease(self, owner: int, key: str, mode: dict) -> None:
            if not self.backend.supports_shared and mode.get("shared"):
                return
            if not admitted(self.holders[key], mode):
                with pytest.raises(LockTimeoutError):
                    self.owners[owner].lock(key, TTL, **mode)
                return
            lease = self.owners[owner].lock(key, TTL, correlation_id="lease", **mode)
            assert (lease.shared, lease.limit) == (mode.get("shared", False), mode.get("limit", 1))
            self._took(owner, key, lease.token, lease.fencing_token, lease.shared)
            self.leases[lease.token] = lease

        @rule(data=st.data())
        def use_lease(self, data) -> None:
            if not self.leases:
                return
            token = data.draw(st.sampled_from(list(self.leases)))  # in order taken: deterministic
            lease = self.leases[token]
            if data.draw(st.booleans()):
                lease.release()
                del self.leases[token]
                self._gone(lease.key, token)
            else:
                lease.extend()

        @rule(data=st.data())
        def use_a_lost_lease(self, data) -> None:
            """A lease released or broken by someone else: extend and release refuse."""
            if not self.lost_leases:
                return
            lease = data.draw(st.sampled_from(self.lost_leases))
            with pytest.raises(LockNotHeldError):
                lease.extend() if data.draw(st.booleans()) else lease.release()

        @invariant()
        def backend_agrees_with_model(self) -> None:
            proof.state_machine_steps[alias] += 1
            for key in KEYS:
                expected = {h.token for h in self.holders[key]}
                holders = self.backend.get_holders(key)
                assert {i.token for i in holders} == expected
                assert len(holders) == len(expected)
                info = self.backend.get_lock(key)
                assert (info.token if info else None) in (expected or {None})
                exclusive = [h for h in self.holders[key] if not h.shared]
                if len(self.holders[key]) == 1 and exclusive:
                    assert info.token == exclusive[0].token
            if self.backend.supports_enumeration:
                held = sorted((i.key, i.token) for i in self.backend.held_locks())
                assert held == sorted((k, h.token) for k, hs in self.holders.items() for h in hs)

        def teardown(self) -> None:
            for key in KEYS:
                self.backend.force_release(key)

    return LockModel


def test_state_machine(alias, request):
    long = request.config.getoption("--long")
    machine = machine_for(alias)
    machine.TestCase.settings = settings(
        max_examples=200 if long else 30,
        stateful_step_count=40 if long else 20,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    machine.TestCase().runTest()
