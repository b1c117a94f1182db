"""Fenced writes (django_locks.fencing): a lost lease cannot overwrite what a newer holder
wrote, on every database, with the leases of every backend; with a DatabaseLock on the
model's own database, a lease past its ttl cannot write at all.

The proofs use real processes: a holder stopped with SIGSTOP past its ttl resumes (SIGCONT)
and tries to write (tests/support/fencing_worker.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.core import checks
from django.db import connections, models, transaction
from django.db.migrations.recorder import MigrationRecorder
from django.test import Client

from django_locks import locks
from django_locks.exceptions import LockNotHeldError
from django_locks.fencing import FencedModel, FencedQuerySet, StaleLeaseError
from tests.helpers import DATABASE_ALIASES, REDIS_ALIASES, ROOT, subprocess_env, wait_until
from tests.support.fencedapp.models import Document, WriteLog

#: The databases a Document lives on (every test database).
DBS = [db for db in ("default", "postgres", "mysql") if db in settings.DATABASES]
#: The lock aliases whose leases fence: a DatabaseLock per database, and both Redis clients.
LOCK_ALIASES = [*DATABASE_ALIASES, *REDIS_ALIASES]
COMBOS = [(alias, db) for alias in LOCK_ALIASES for db in DBS]


def same_db(alias: str, db: str) -> bool:
    return DATABASE_ALIASES.get(alias) == db


def combo_id(combo: tuple[str, str]) -> str:
    return f"{combo[0]}-lock-on-{combo[1]}-db"


@pytest.fixture(autouse=True)
def documents():
    yield
    for db in DBS:
        Document.objects.using(db).all().delete()
        WriteLog.objects.using(db).all().delete()


@pytest.fixture(params=COMBOS, ids=combo_id)
def combo(request) -> tuple[str, str]:
    return request.param


def doc(db: str, name: str = "report:7", body: str = "old") -> Document:
    return Document.objects.using(db).create(name=name, body=body)


def row(db: str, pk: int) -> tuple[str, int] | None:
    found = Document.objects.using(db).filter(pk=pk).values_list("body", "fencing_token").first()
    return None if found is None else tuple(found)


def lost_and_newer(alias: str, key: str):
    """A lease that another holder took the key from (force release: the older one is lost
    as if paused past its ttl), and that newer holder's lease."""
    older = locks.create_connection(alias).lock(key, 60_000)
    assert locks.create_connection(alias).force_release(key)
    newer = locks.create_connection(alias).lock(key, 60_000)
    assert newer.fencing_token > older.fencing_token
    return older, newer


# ----------------------------------------------------------------------------- in one process


def test_fenced_writes_stamp_the_lease_token(combo):
    alias, db = combo
    document = doc(db)
    with locks[alias].lock("report:7", ttl=30_000) as lease:
        fenced = Document.objects.using(db).fenced(lease)
        assert fenced.filter(pk=document.pk).update(body="updated") == 1
        assert row(db, document.pk) == ("updated", lease.fencing_token)
        created = fenced.create(name="created", body="c")
        assert row(db, created.pk) == ("c", lease.fencing_token)
        got, was_created = fenced.get_or_create(name="got", defaults={"body": "g"})
        assert was_created and row(db, got.pk) == ("g", lease.fencing_token)
        again, was_created = fenced.get_or_create(name="got", defaults={"body": "other"})
        assert not was_created and again.pk == got.pk and row(db, got.pk) == ("g", lease.fencing_token)
        updated, was_created = fenced.update_or_create(name="created", defaults={"body": "u"})
        assert not was_created and updated.pk == created.pk and updated.fencing_token == lease.fencing_token
        assert row(db, created.pk) == ("u", lease.fencing_token)
        made, was_created = fenced.update_or_create(name="made", defaults={"body": "m"},
                                                    create_defaults={"body": "made"})
        assert was_created and row(db, made.pk) == ("made", lease.fencing_token)
        instance = Document(name="saved", body="s")
        instance.save(fence=lease, using=db)  # an insert
        assert row(db, instance.pk) == ("s", lease.fencing_token)
        instance.body = "saved again"
        instance.save(fence=lease, using=db)  # an update: the same lease may write twice
        assert row(db, instance.pk) == ("saved again", lease.fencing_token)
        unfenced = doc(db, name="unfenced")  # written without a lease: token 0
        unfenced.body, unfenced.name = "only the body", "not saved"
        unfenced.save(fence=lease, using=db, update_fields=["body"])  # the token is added to them
        assert row(db, unfenced.pk) == ("only the body", lease.fencing_token)
        assert Document.objects.using(db).get(pk=unfenced.pk).name == "unfenced"
        assert fenced.filter(pk=instance.pk).delete() == (1, {"fencedapp.Document": 1})
        assert row(db, instance.pk) is None


def test_a_lost_lease_is_refused_after_a_newer_holder_wrote(combo):
    alias, db = combo
    document = doc(db)
    other = doc(db, name="other")
    older, newer = lost_and_newer(alias, "report:7")
    assert Document.objects.using(db).fenced(newer).filter(pk=document.pk).update(body="new") == 1
    fenced = Document.objects.using(db).fenced(older)
    attempts = {
        "update": lambda: fenced.filter(pk=document.pk).update(body="stale"),
        "update of several": lambda: fenced.filter(pk__in=[document.pk, other.pk]).update(body="stale"),
        "delete": lambda: fenced.filter(pk=document.pk).delete(),
        "get_or_create": lambda: fenced.get_or_create(name="report:7"),
        "update_or_create": lambda: fenced.update_or_create(name="report:7", defaults={"body": "stale"}),
    }
    for what, attempt in attempts.items():
        with pytest.raises(StaleLeaseError) as refused:
            attempt()
        assert refused.value.newer_fencing_token == newer.fencing_token, what
        assert row(db, document.pk) == ("new", newer.fencing_token), what
        assert row(db, other.pk) == ("old", 0), what  # nothing of a refused write is written
    instance = Document.objects.using(db).get(pk=document.pk)
    instance.body = "stale"
    with pytest.raises(StaleLeaseError):
        instance.save(fence=older)
    assert (instance.body, instance.fencing_token) == ("stale", newer.fencing_token)  # unchanged
    assert row(db, document.pk) == ("new", newer.fencing_token)
    newer.release()


def test_the_refusal_names_the_model_the_key_and_both_tokens(combo):
    alias, db = combo
    document = doc(db)
    older, newer = lost_and_newer(alias, "report:7")
    Document.objects.using(db).fenced(newer).filter(pk=document.pk).update(body="new")
    with pytest.raises(StaleLeaseError) as refused:
        Document.objects.using(db).fenced(older).filter(pk=document.pk).update(body="stale")
    error = refused.value
    assert isinstance(error, LockNotHeldError)
    message = str(error)
    for part in ("fencedapp.Document", "'report:7'", str(older.fencing_token), str(newer.fencing_token)):
        assert part in message
    assert (error.model, error.key, error.fencing_token) == (Document, "report:7", older.fencing_token)
    newer.release()


def test_a_lease_past_its_ttl_writes_only_where_the_lock_is_not_on_the_same_database(combo):
    """DatabaseLock on the model's database: refused once the ttl ran out, though nobody took
    the key. Elsewhere (Redis, another database) only a newer holder's write refuses it."""
    alias, db = combo
    document = doc(db)
    lease = locks[alias].lock("report:7", ttl=150)
    wait_until(lambda: locks[alias].get_lock("report:7") is None)  # expired; nobody took it
    fenced = Document.objects.using(db).fenced(lease)
    if same_db(alias, db):
        with pytest.raises(StaleLeaseError) as refused:
            fenced.filter(pk=document.pk).update(body="late")
        assert "no longer holds its key by the database's clock" in str(refused.value)
        assert refused.value.newer_fencing_token == lease.fencing_token  # nobody took it since
        with pytest.raises(StaleLeaseError):
            fenced.create(name="late")
        assert row(db, document.pk) == ("old", 0)
        assert not Document.objects.using(db).filter(name="late").exists()
    else:
        assert fenced.filter(pk=document.pk).update(body="late") == 1
        assert row(db, document.pk) == ("late", lease.fencing_token)


@pytest.mark.parametrize("db", DBS)
def test_many_rows_are_written_in_chunks_of_one_transaction(db):
    """More rows than one statement takes by primary key (500): all written, or none."""
    Document.objects.using(db).bulk_create([Document(name=f"d{i}") for i in range(1201)])
    older, newer = lost_and_newer("memory", "many")
    assert Document.objects.using(db).fenced(older).update(body="older") == 1201
    Document.objects.using(db).filter(name="d1200").update(fencing_token=newer.fencing_token)
    with pytest.raises(StaleLeaseError):  # the newer row is the last chunk's
        Document.objects.using(db).fenced(older).update(body="stale")
    assert set(Document.objects.using(db).values_list("body", flat=True)) == {"older"}
    assert Document.objects.using(db).fenced(newer).update(body="newer") == 1201
    assert set(Document.objects.using(db).values_list("fencing_token", flat=True)) == {newer.fencing_token}
    deleted = Document.objects.using(db).fenced(newer).delete()
    assert deleted == (1201, {"fencedapp.Document": 1201})
    assert not Document.objects.using(db).exists()


@pytest.mark.parametrize("db", DBS)
def test_an_exclusive_holder_a_semaphore_joined_still_writes(db):
    """A semaphore admitted beside an exclusive holder moves it to the holders' table: it
    still holds the key, and its fenced writes pass the same-database check."""
    alias = next(a for a, using in DATABASE_ALIASES.items() if using == db)
    document = doc(db)
    exclusive = locks[alias].lock("report:7", ttl=30_000)
    joined = locks.create_connection(alias).lock("report:7", ttl=30_000, limit=2)
    assert Document.objects.using(db).fenced(exclusive).filter(pk=document.pk).update(body="x") == 1
    joined.release()
    exclusive.release()


def test_a_refusal_inside_atomic_leaves_the_callers_transaction_usable(combo):
    alias, db = combo
    document = doc(db)
    older, newer = lost_and_newer(alias, "report:7")
    Document.objects.using(db).fenced(newer).filter(pk=document.pk).update(body="new")
    with transaction.atomic(using=db):
        Document.objects.using(db).create(name="in the transaction")
        with pytest.raises(StaleLeaseError):
            Document.objects.using(db).fenced(older).filter(pk=document.pk).update(body="stale")
        instance = Document.objects.using(db).get(pk=document.pk)
        with pytest.raises(StaleLeaseError):
            instance.save(fence=older)
        assert Document.objects.using(db).fenced(newer).filter(pk=document.pk).update(body="newer") == 1
    assert row(db, document.pk) == ("newer", newer.fencing_token)
    assert Document.objects.using(db).filter(name="in the transaction").exists()
    newer.release()


def test_an_accepted_fenced_write_is_part_of_the_callers_transaction(combo):
    """An error in the caller's block after an accepted fenced write undoes it: the fenced
    write is part of the caller's transaction."""
    alias, db = combo
    document = doc(db)
    with locks[alias].lock("report:7", ttl=30_000) as lease:
        with pytest.raises(ZeroDivisionError), transaction.atomic(using=db):
            Document.objects.using(db).fenced(lease).filter(pk=document.pk).update(body="undone")
            1 / 0  # noqa: B018
    assert row(db, document.pk) == ("old", 0)


@pytest.mark.parametrize("alias", [a for a in DATABASE_ALIASES if DATABASE_ALIASES[a] != "default"])
def test_the_lease_extends_and_releases_inside_the_atomic_block_of_its_fenced_write(alias):
    """The fenced write reads the lock row, it does not lock it: the lease's own extend and
    release (on DatabaseLock's private connection) do not wait for the caller's commit.
    (SQLite excepted: there any open write transaction holds the file's one write lock.)"""
    db = DATABASE_ALIASES[alias]
    document = doc(db)
    done = []

    def extend_and_release(lease) -> None:
        lease.extend()
        lease.release()
        done.append(True)

    lease = locks[alias].lock("report:7", ttl=30_000)
    with transaction.atomic(using=db):
        Document.objects.using(db).fenced(lease).filter(pk=document.pk).update(body="x")
        thread = threading.Thread(target=extend_and_release, args=(lease,), daemon=True)
        thread.start()
        thread.join(timeout=15)
        assert done, "the lease's extend/release waited for the caller's transaction"
    assert row(db, document.pk) == ("x", lease.fencing_token)


@pytest.mark.unit
@pytest.mark.parametrize("db", DBS)
def test_unfenced_writes_are_djangos(db):
    document = doc(db)
    assert Document.objects.using(db).filter(pk=document.pk).update(body="plain") == 1
    assert Document.objects.db_manager(db).update(body="manager") == 1  # Manager.update, as Django's
    document.refresh_from_db(using=db)
    document.body = "saved"
    document.save(using=db)
    assert row(db, document.pk) == ("saved", 0)
    assert isinstance(Document.objects.all(), FencedQuerySet)
    assert Document.objects.all().fence is None


@pytest.mark.unit
@pytest.mark.parametrize("db", DBS)
def test_memory_lock_leases_fence_by_token_order(db):
    """MemoryLock (a process's own locks, tokens from 1): the token order alone."""
    document = doc(db)
    older = locks["memory"].lock("report:7", ttl=60_000)
    assert locks["memory"].force_release("report:7")
    newer = locks["memory"].lock("report:7", ttl=60_000)
    instance = Document.objects.using(db).get(pk=document.pk)
    instance.body = "new"
    instance.save(fence=newer)
    with pytest.raises(StaleLeaseError) as refused:
        Document.objects.using(db).fenced(older).filter(pk=document.pk).update(body="stale")
    assert (refused.value.fencing_token, refused.value.newer_fencing_token) == (
        older.fencing_token, newer.fencing_token)
    assert row(db, document.pk) == ("new", newer.fencing_token)
    newer.release()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.unit
def test_bad_leases_are_refused_naming_the_argument_and_nothing_is_written():
    db = "default"
    document = doc(db)
    for bad in (None, "report:7", 42, object()):
        with pytest.raises(TypeError, match=r"^lease must be a django_locks Lease"):
            Document.objects.fenced(bad)
        if bad is not None:  # save(fence=None) is Django's save
            with pytest.raises(TypeError, match=r"^fence must be a django_locks Lease"):
                document.save(fence=bad)
    shared = locks["default"].lock("shared", ttl=30_000, shared=True)
    semaphore = locks["default"].lock("semaphore", ttl=30_000, limit=3)
    for lease, label in ((shared, "shared"), (semaphore, "semaphore of 3")):
        with pytest.raises(ValueError, match=rf"^lease must be an exclusive lease, not a {label} one"):
            Document.objects.fenced(lease)
        with pytest.raises(ValueError, match=r"^fence must be an exclusive lease"):
            document.save(fence=lease)
    with locks["default"].lock("report:7", ttl=30_000) as lease:
        fenced = Document.objects.fenced(lease)
        with pytest.raises(ValueError, match=r"update\(\): do not pass 'fencing_token'"):
            fenced.filter(pk=document.pk).update(body="x", fencing_token=10**18)
        with pytest.raises(ValueError, match=r"create\(\): do not pass 'fencing_token'"):
            fenced.create(name="x", fencing_token=10**18)
        with pytest.raises(ValueError, match=r"get_or_create\(\): do not pass 'fencing_token'"):
            fenced.get_or_create(name="x", defaults={"fencing_token": 1})
        with pytest.raises(NotImplementedError, match="bulk_create"):
            fenced.bulk_create([Document(name="x")])
        with pytest.raises(NotImplementedError, match="bulk_update"):
            fenced.bulk_update([document], ["body"])
    with pytest.raises(LockNotHeldError, match="was released"):
        Document.objects.fenced(lease).filter(pk=document.pk).update(body="after release")
    with pytest.raises(LockNotHeldError, match="was released"):
        document.save(fence=lease)
    shared.release()
    semaphore.release()
    assert row(db, document.pk) == ("old", 0)
    assert list(Document.objects.values_list("name", flat=True)) == ["report:7"]


# ----------------------------------------------------------------------------- async


@pytest.mark.parametrize("combo", [("default", "default"), *[
    c for c in COMBOS if c in {("postgres", "postgres"), ("mysql", "mysql"), ("redis", "postgres"),
                               ("django_redis", "mysql")}]], ids=combo_id)
def test_the_async_api(combo):
    alias, db = combo
    document = doc(db)
    other = doc(db, name="other")

    async def scenario() -> None:
        try:
            async with locks[alias].alock("report:7", ttl=30_000) as lease:
                fenced = Document.objects.using(db).fenced(lease)
                assert await fenced.filter(pk=document.pk).aupdate(body="a") == 1
                created = await fenced.acreate(name="acreated")
                _, was_created = await fenced.aget_or_create(name="agot")
                assert was_created
                _, was_created = await fenced.aupdate_or_create(name="acreated", defaults={"body": "u"})
                assert not was_created
                instance = Document(name="asaved")
                await instance.asave(fence=lease, using=db)
                assert await fenced.filter(pk=other.pk).adelete() == (1, {"fencedapp.Document": 1})
                tokens = {token async for token in Document.objects.using(db).exclude(
                    pk=document.pk).values_list("fencing_token", flat=True)}
                assert tokens == {lease.fencing_token}
                assert created.fencing_token == lease.fencing_token
            older, newer = await sync_to_async(lost_and_newer)(alias, "report:9")
            await Document.objects.using(db).fenced(newer).filter(pk=document.pk).aupdate(body="new")
            stale = Document.objects.using(db).fenced(older)
            for attempt in (lambda: stale.filter(pk=document.pk).aupdate(body="stale"),
                            lambda: stale.filter(pk=document.pk).adelete(),
                            lambda: stale.aupdate_or_create(pk=document.pk, defaults={"body": "s"}),
                            lambda: stale.aget_or_create(pk=document.pk)):
                with pytest.raises(StaleLeaseError):
                    await attempt()
            instance = await Document.objects.using(db).aget(pk=document.pk)
            with pytest.raises(StaleLeaseError):
                await instance.asave(fence=older)
            await newer.arelease()
        finally:
            await sync_to_async(connections.close_all)()

    asyncio.run(scenario())
    assert row(db, document.pk)[0] == "new"


# ----------------------------------------------------------------------------- processes


def start_worker(config: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.fencing_worker", json.dumps(config)],
        cwd=ROOT, env=subprocess_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def read_json_line(worker: subprocess.Popen) -> dict:
    line = worker.stdout.readline()
    if not line:
        worker.wait(timeout=30)
        pytest.fail(f"the worker ended (exit {worker.returncode}): {worker.stderr.read()}")
    return json.loads(line)


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def paused_holder(alias: str, db: str, key: str, ttl: int) -> tuple[subprocess.Popen, int]:
    """A worker holding ``key``, stopped (SIGSTOP) with its go-ahead already in its stdin:
    once continued it writes at once. Returns it and its lease's fencing token."""
    worker = start_worker({"mode": "pause", "alias": alias, "db": db, "key": key, "ttl": ttl,
                           "name": "report:7", "ops": ["update", "save", "delete"]})
    lease = read_json_line(worker)
    os.kill(worker.pid, signal.SIGSTOP)
    wait_until(lambda: stopped(worker.pid))
    worker.stdin.write("go\n")
    worker.stdin.flush()
    return worker, lease["fencing_token"]


def resume(worker: subprocess.Popen) -> list[dict]:
    os.kill(worker.pid, signal.SIGCONT)
    outcomes = [read_json_line(worker) for _ in range(3)]
    assert worker.wait(timeout=60) == 0, worker.stderr.read()
    return outcomes


def test_a_paused_holder_cannot_write_after_another_process_took_the_lock_and_wrote(combo):
    alias, db = combo
    document = doc(db)
    worker, paused_token = paused_holder(alias, db, "report:7", ttl=1000)
    try:
        wait_until(lambda: locks[alias].get_lock("report:7") is None)  # its ttl ran out
        with locks[alias].lock("report:7", ttl=30_000) as lease:
            assert Document.objects.using(db).fenced(lease).filter(pk=document.pk).update(body="new") == 1
        outcomes = resume(worker)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGCONT)
            worker.kill()
            worker.wait(timeout=30)
    assert [o["op"] for o in outcomes] == ["update", "save", "delete"]
    for outcome in outcomes:
        assert outcome["outcome"] == "StaleLeaseError", outcome
        assert outcome["lock_not_held"]
        assert outcome["fencing_token"] == paused_token
        assert outcome["newer"] == lease.fencing_token > paused_token
        for part in ("fencedapp.Document", "'report:7'", str(paused_token), str(lease.fencing_token)):
            assert part in outcome["message"]
    assert row(db, document.pk) == ("new", lease.fencing_token)


@pytest.mark.parametrize("alias", list(DATABASE_ALIASES))
def test_a_paused_database_lock_holder_cannot_write_once_its_ttl_ran_out(alias):
    """DatabaseLock on the model's database: nobody took the key, yet the resumed holder's
    update, save and delete are refused by the database's clock."""
    db = DATABASE_ALIASES[alias]
    document = doc(db)
    worker, paused_token = paused_holder(alias, db, "report:7", ttl=1000)
    try:
        wait_until(lambda: locks[alias].get_lock("report:7") is None, timeout=20)
        outcomes = resume(worker)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGCONT)
            worker.kill()
            worker.wait(timeout=30)
    for outcome in outcomes:
        assert outcome["outcome"] == "StaleLeaseError", outcome
        assert "no longer holds its key by the database's clock" in outcome["message"]
        assert outcome["newer"] == paused_token  # nobody took the key since
    assert row(db, document.pk) == ("old", 0)


CONTENTION = [c for c in (("default", "default"), ("postgres", "postgres"), ("mysql", "mysql"),
                          ("redis", "postgres"), ("django_redis", "mysql"), ("postgres", "default"))
              if c in COMBOS]


@pytest.mark.parametrize("combo", CONTENTION, ids=combo_id)
def test_contention_with_random_pauses_keeps_every_write_in_token_order(combo):
    """Three processes take the key in turn and pause at random, often past the ttl, before
    a fenced update of two rows or a fenced save of one: per row, the writes that were
    accepted committed in fencing-token order, the row holds the last of them, and every
    refused one wrote nothing."""
    alias, db = combo
    names = ["contended-a", "contended-b"]
    documents = [doc(db, name=name, body="") for name in names]
    iterations, workers = 10, 3
    procs = [start_worker({"mode": "contend", "alias": alias, "db": db, "key": "contended",
                           "names": names, "ttl": 150, "pause_max": 0.3,
                           "iterations": iterations, "seed": seed})
             for seed in range(workers)]
    summaries = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err
            summaries.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    accepted = sum(s["accepted"] for s in summaries)
    refused = sum(s["refused"] for s in summaries)
    assert accepted + refused == iterations * workers
    assert accepted > 0
    writes = 0
    for document in documents:
        log = list(WriteLog.objects.using(db).filter(document=document.name).order_by("id")
                   .values_list("fencing_token", "pid"))
        writes += len(log)
        tokens = [token for token, _ in log]
        assert tokens == sorted(tokens), f"a stale write to {document.name} was accepted: {tokens}"
        if log:
            last_token, last_pid = log[-1]
            assert row(db, document.pk) == (f"{last_token} {last_pid}", last_token)
        else:
            assert row(db, document.pk) == ("", 0)
    assert accepted <= writes <= 2 * accepted


# ----------------------------------------------------------------------------- admin, checks


@pytest.mark.unit
def test_the_admin_shows_the_fencing_token():
    with locks["default"].lock("report:7", ttl=30_000) as lease:
        document = Document.objects.fenced(lease).create(name="report:7", body="b")
    account = User.objects.create_user("fence-admin", password="pw", is_staff=True, is_superuser=True)
    try:
        client = Client()
        client.force_login(account)
        response = client.get(f"/admin/fencedapp/document/{document.pk}/change/")
        assert response.status_code == 200
        page = response.content.decode()
        assert 'name="fencing_token"' in page and f'value="{lease.fencing_token}"' in page
    finally:
        account.delete()


def e010(databases):
    return [m for m in checks.run_checks(databases=databases) if m.id == "django_locks.E010"]


@pytest.mark.unit
def test_check_e010_is_silent_on_migrated_databases():
    assert e010(DBS) == []


@pytest.fixture
def unmigrated_model():
    """A FencedModel of the fenced app whose table was created without the column."""
    from django.apps import apps

    class Unmigrated(FencedModel):
        body = models.TextField()

        class Meta:
            app_label = "fencedapp"
            db_table = "fencedapp_unmigrated"

    with connections["default"].cursor() as cursor:
        cursor.execute('CREATE TABLE "fencedapp_unmigrated" ("id" integer PRIMARY KEY, "body" text)')
    yield Unmigrated
    with connections["default"].cursor() as cursor:
        cursor.execute('DROP TABLE "fencedapp_unmigrated"')
    del apps.all_models["fencedapp"]["unmigrated"]
    apps.clear_cache()


@pytest.mark.unit
def test_check_e010_flags_a_table_without_the_column(unmigrated_model):
    messages = e010(["default"])
    assert len(messages) == 1
    message = messages[0]
    assert message.obj is unmigrated_model and message.level == checks.ERROR
    assert "fencedapp.Unmigrated" in message.msg and "'fencing_token'" in message.msg
    assert "'default'" in message.msg and "migrate" in message.hint
    assert e010(None) == []  # a database check: only run when databases are given


@pytest.mark.unit
def test_check_e010_waits_for_pending_migrations(unmigrated_model):
    """migrate runs the database checks before it applies migrations: an app with some
    still to apply is not reported (its migration may add the column)."""
    recorder = MigrationRecorder(connections["default"])
    recorder.record_unapplied("fencedapp", "0001_initial")
    try:
        assert e010(["default"]) == []
    finally:
        recorder.record_applied("fencedapp", "0001_initial")
    assert len(e010(["default"])) == 1
