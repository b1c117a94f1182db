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


def machine_for(alias: str) -> type[RuleBasedStateMachine]:
    class LockModel(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            self.owners = [locks.create_connection(alias) for _ in OWNERS]
            self.backend = self.owners[0]
            for key in KEYS:
                self.backend.force_release(key)
            self.holders: dict[str, tuple[int, str]] = {}  # key -> (owner, token)
            self.fencing: dict[str, int] = {}
            self.leases: dict[str, tuple[int, object]] = {}
            self.lost_leases: list[object] = []

        def _lose_lease(self, key: str) -> None:
            if key in self.leases:
                self.lost_leases.append(self.leases.pop(key)[1])

        def _took(self, owner: int, key: str) -> None:
            info = self.backend.get_lock(key)
            assert info is not None
            assert info.fencing_token > self.fencing.get(key, 0)
            self.fencing[key] = info.fencing_token
            self.holders[key] = (owner, info.token)

        @rule(owner=st.sampled_from(OWNERS), key=st.sampled_from(KEYS))
        def try_acquire(self, owner: int, key: str) -> None:
            got = self.owners[owner].try_acquire_lock("sm", key, TTL)
            assert got == (key not in self.holders)
            if got:
                self._took(owner, key)

        @rule(owner=st.sampled_from(OWNERS), key=st.sampled_from(KEYS))
        def acquire(self, owner: int, key: str) -> None:
            if key in self.holders:
                with pytest.raises(LockTimeoutError):
                    self.owners[owner].acquire_lock("sm", key, TTL, 0)
            else:
                self.owners[owner].acquire_lock("sm", key, TTL, 0)
                self._took(owner, key)

        @rule(owner=st.sampled_from(OWNERS), key=st.sampled_from(KEYS))
        def release(self, owner: int, key: str) -> None:
            holder = self.holders.get(key)
            if holder and holder[0] == owner:  # also a lock taken as a Lease by this owner
                self.owners[owner].release_lock("sm", key)
                del self.holders[key]
                self._lose_lease(key)
            else:
                with pytest.raises(LockNotHeldError):
                    self.owners[owner].release_lock("sm", key)

        @rule(owner=st.sampled_from(OWNERS), key=st.sampled_from(KEYS), right_token=st.booleans())
        def owner_release(self, owner: int, key: str, right_token: bool) -> None:
            holder = self.holders.get(key)
            token = holder[1] if holder and right_token else secrets.token_hex(16)
            if holder and right_token:
                self.owners[owner].release_lock("sm", key, owner=token)
                del self.holders[key]
                self._lose_lease(key)
            else:
                with pytest.raises(LockNotHeldError):
                    self.owners[owner].release_lock("sm", key, owner=token)

        @rule(owner=st.sampled_from(OWNERS), key=st.sampled_from(KEYS))
        def force_release(self, owner: int, key: str) -> None:
            assert self.owners[owner].force_release(key) == (key in self.holders)
            self.holders.pop(key, None)
            self._lose_lease(key)

        @rule(owner=st.sampled_from(OWNERS), key=st.sampled_from(KEYS))
        def take_lease(self, owner: int, key: str) -> None:
            if key in self.holders:
                with pytest.raises(LockTimeoutError):
                    self.owners[owner].lock(key, TTL)
                return
            lease = self.owners[owner].lock(key, TTL, correlation_id="lease")
            self._took(owner, key)
            self.leases[key] = (owner, lease)

        @rule(key=st.sampled_from(KEYS), release=st.booleans())
        def use_lease(self, key: str, release: bool) -> None:
            if key not in self.leases:
                return
            _, lease = self.leases[key]
            if release:
                lease.release()
                del self.leases[key]
                del self.holders[key]
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
                info = self.backend.get_lock(key)
                expected = self.holders.get(key)
                assert (info.token if info else None) == (expected[1] if expected else None)
            if self.backend.supports_enumeration:
                assert sorted(i.key for i in self.backend.held_locks()) == sorted(self.holders)

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
