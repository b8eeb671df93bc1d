"""API keys: hashes only on disk, revocation, malformed input, several processes at once."""

from __future__ import annotations

import doctest
import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from qingliang.platform.errors import BadRequest, NotFound
from qingliang.platform.storage import keys as keys_mod
from qingliang.platform.storage.keys import LAST_USED_RESOLUTION_S, KeyRecord, KeyStore


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> KeyStore:
    return KeyStore(tmp_path / "state" / "state.sqlite", clock=clock)


def db_bytes(path: Path) -> bytes:
    """The database file with its WAL and shared-memory files, as they lie on disk."""
    return b"".join(
        p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")) if p.is_file()
    )


# ------------------------------------------------------------------------ construction


def test_constructor_touches_nothing(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "dir" / "state.sqlite"
    store = KeyStore(path)
    assert store.path == path
    assert not path.parent.exists()
    assert store.list() == []  # first use creates folder, file and table
    assert path.is_file()


def test_wal_mode_and_owner_only_file(store: KeyStore) -> None:
    store.create("ci")
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_existing_database_with_other_tables_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE manifests (name TEXT)")
    conn.execute("INSERT INTO manifests VALUES ('tiny')")
    conn.commit()
    conn.close()
    store = KeyStore(path)
    _, key = store.create("ci")
    assert store.verify(key) is not None
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM manifests").fetchall() == [("tiny",)]
    conn.close()
    # A second store over the same file finds the same keys.
    assert [r.name for r in KeyStore(path).list()] == ["ci"]


# ------------------------------------------------------------------------------ create


def test_create_returns_record_and_plaintext_once(store: KeyStore, clock: FakeClock) -> None:
    record, key = store.create("ci")
    assert isinstance(record, KeyRecord)
    prefix, key_id, secret = key.split("-", 2)
    assert prefix == "ql"
    assert key_id == record.id and len(key_id) == 12
    assert len(secret) == 43  # 32 bytes, URL-safe base64 without padding
    assert record.prefix == f"ql-{record.id}"
    assert key.startswith(record.prefix + "-")
    assert record.name == "ci"
    # What a domain application needs, bound to the tenant "default" (no admin).
    assert record.scopes == ("inference", "knowledge:read", "agents:run")
    assert record.created_at == datetime.fromtimestamp(clock.now, UTC)
    assert (record.revoked_at, record.last_used_at, record.revoked) == (None, None, False)
    assert record.allows("inference") and not record.allows("admin")
    assert key not in repr(record)


def test_keys_are_unique(store: KeyStore) -> None:
    made = [store.create(f"k{i}") for i in range(20)]
    assert len({k for _, k in made}) == 20
    assert len({r.id for r, _ in made}) == 20


def test_scopes(store: KeyStore) -> None:
    record, key = store.create("ops", scopes=["inference", "admin", "inference"])
    assert record.scopes == ("inference", "admin")
    verified = store.verify(key)
    assert verified is not None and verified.scopes == ("inference", "admin")
    assert store.list()[0].scopes == ("inference", "admin")


@pytest.mark.parametrize(
    ("scopes", "fragment"),
    [
        ((), "at least one scope"),
        ("inference", "not the string 'inference'"),
        (["Inference"], "scope 'Inference' is invalid"),
        (["in ference"], "is invalid"),
        ([""], "scope '' is invalid"),
        ([3], "scope 3 is invalid"),
        (["inferense"], "unknown scope"),
        (["admin", "tenant:a"], "admin key acts for every tenant"),
        (["deploy", "tenant:a"], "deploy key cannot be bound"),
        (["inference", "tenant:a", "tenant:b"], "one tenant at most"),
        (["inference", "tenant:"], "names its tenant"),
    ],
)
def test_bad_scopes(store: KeyStore, scopes: object, fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment) as info:
        store.create("ci", scopes=scopes)  # type: ignore[arg-type]
    assert info.value.param == "scopes"


@pytest.mark.parametrize("name", ["ci", "CI-runner", "team.a_b-1", "a", "x" * 64, "0abc"])
def test_valid_names(store: KeyStore, name: str) -> None:
    assert store.create(name)[0].name == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "key name '' is invalid"),
        ("-ci", "starting with a letter or digit"),
        (".ci", "is invalid"),
        ("has space", "is invalid"),
        ("a:b", "is invalid"),
        ("a/b", "is invalid"),
        ("ci\n", "is invalid"),
        ("x" * 65, "1-64 letters"),
        ("名字", "is invalid"),
        (None, "key name None is invalid"),
        (42, "key name 42 is invalid"),
        ("0123456789ab", "looks like a key id"),
    ],
)
def test_bad_names(store: KeyStore, name: object, fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment) as info:
        store.create(name)  # type: ignore[arg-type]
    assert info.value.param == "name"
    assert info.value.status_code == 400
    assert store.list() == []


def test_duplicate_active_name_is_rejected(store: KeyStore) -> None:
    """Decision: names are unique among active keys, so revoke-by-name is unambiguous."""
    first, _ = store.create("ci")
    with pytest.raises(BadRequest, match=f"an active key named 'ci' exists \\(id {first.id}\\)"):
        store.create("ci")
    assert len(store.list()) == 1


def test_name_is_reusable_after_revoke(store: KeyStore, clock: FakeClock) -> None:
    old, old_key = store.create("ci")
    store.revoke("ci")
    clock.now += 1
    new, new_key = store.create("ci")
    assert new.id != old.id
    assert store.verify(old_key) is None
    verified = store.verify(new_key)
    assert verified is not None and verified.id == new.id
    assert [(r.id, r.revoked) for r in store.list()] == [(old.id, True), (new.id, False)]


def test_duplicate_name_rejected_by_the_database_too(store: KeyStore) -> None:
    store.create("ci")
    conn = sqlite3.connect(store.path)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO api_keys (id, name, key_sha256, scopes, created_at) "
                "VALUES ('ffffffffffff', 'ci', 'x', 'inference', 0)"
            )
    finally:
        conn.close()


# ----------------------------------------------------------------------------- on disk


def test_plaintext_never_reaches_the_database(store: KeyStore, clock: FakeClock) -> None:
    made = [store.create(f"k{i}")[1] for i in range(5)]
    for key in made:
        assert store.verify(key) is not None
    clock.now += 3600
    for key in made:
        store.verify(key)
    store.revoke(made[0].split("-")[1])
    data = db_bytes(store.path)
    assert data  # the files exist and were read
    for key in made:
        secret = key.split("-", 2)[2]
        assert key.encode() not in data
        assert secret.encode() not in data
        assert secret[:16].encode() not in data
        assert secret[-16:].encode() not in data
    # Also after a checkpoint has moved everything into the main file.
    conn = sqlite3.connect(store.path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = store.path.read_bytes()
    assert all(k.split("-", 2)[2][:16].encode() not in data for k in made)


def test_only_the_sha256_is_stored(store: KeyStore) -> None:
    import hashlib

    record, key = store.create("ci")
    conn = sqlite3.connect(store.path)
    try:
        (stored,) = conn.execute(
            "SELECT key_sha256 FROM api_keys WHERE id = ?", (record.id,)
        ).fetchone()
    finally:
        conn.close()
    assert stored == hashlib.sha256(key.encode()).hexdigest()


# ------------------------------------------------------------------------------ verify


def test_verify_accepts_the_key(store: KeyStore) -> None:
    record, key = store.create("ci")
    verified = store.verify(key)
    assert verified is not None
    assert (verified.id, verified.name, verified.scopes) == (record.id, "ci", record.scopes)


def test_revoked_key_fails_verify(store: KeyStore) -> None:
    record, key = store.create("ci")
    _, other = store.create("other")
    revoked = store.revoke(record.id)
    assert revoked.revoked and revoked.revoked_at is not None
    assert store.verify(key) is None
    assert store.verify(other) is not None


def test_unknown_key(store: KeyStore) -> None:
    _, key = store.create("ci")
    prefix, key_id, secret = key.split("-", 2)
    wrong_secret = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert store.verify(f"{prefix}-{key_id}-{wrong_secret}") is None
    unknown_id = "0" * 12 if key_id != "0" * 12 else "1" * 12
    assert store.verify(f"{prefix}-{unknown_id}-{secret}") is None
    # A well-formed key from another store.
    other = KeyStore(store.path.parent / "other.sqlite")
    _, foreign = other.create("ci")
    assert store.verify(foreign) is None


def test_verify_on_an_empty_store(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "s.sqlite")
    assert store.verify("ql-0123456789ab-" + "a" * 43) is None


GARBAGE = [
    "",
    " ",
    "ql",
    "ql-",
    "ql--",
    "ql-0123456789ab-",
    "ql-0123456789ab",
    "sk-0123456789abcdef",
    "Bearer ql-0123456789ab-" + "a" * 43,
    "ql-0123456789AB-" + "a" * 43,
    "ql-0123456789ab-" + "a" * 42,
    "ql-0123456789ab-" + "a" * 44,
    "ql-0123456789ab-" + "a" * 42 + "=",
    "ql-0123456789ab-" + "a" * 42 + "\n",
    "ql-0123456789ab-" + "a" * 42 + "\u00e9",
    "ql-0123456789ab-" + "a" * 42 + "\x00",
    "ql-'; DROP TABLE api_keys; --",
    "ql-0123456789ab-" + "a" * 10_000,
    "\udcff",
    "密钥",
    None,
    b"ql-0123456789ab-" + b"a" * 43,
    12345,
]


@pytest.mark.parametrize("garbage", GARBAGE, ids=[repr(g)[:40] for g in GARBAGE])
def test_garbage_returns_none(store: KeyStore, garbage: object) -> None:
    store.create("ci")
    assert store.verify(garbage) is None  # type: ignore[arg-type]
    assert len(store.list()) == 1  # the table is still there


def test_a_real_key_with_trailing_junk_fails(store: KeyStore) -> None:
    _, key = store.create("ci")
    for variant in (key + " ", " " + key, key + "\n", key.upper(), key[:-1]):
        assert store.verify(variant) is None


def test_last_used_at_is_written_at_most_once_a_minute(store: KeyStore, clock: FakeClock):
    record, key = store.create("ci")
    start = clock.now

    def on_disk() -> datetime | None:
        (r,) = [r for r in store.list() if r.id == record.id]
        return r.last_used_at

    assert on_disk() is None
    first = store.verify(key)
    assert first is not None and first.last_used_at == datetime.fromtimestamp(start, UTC)
    assert on_disk() == datetime.fromtimestamp(start, UTC)

    clock.now = start + LAST_USED_RESOLUTION_S - 1
    again = store.verify(key)
    assert again is not None and again.last_used_at == datetime.fromtimestamp(start, UTC)
    assert on_disk() == datetime.fromtimestamp(start, UTC)

    clock.now = start + LAST_USED_RESOLUTION_S
    later = store.verify(key)
    assert later is not None and later.last_used_at == datetime.fromtimestamp(clock.now, UTC)
    assert on_disk() == datetime.fromtimestamp(clock.now, UTC)


def test_verify_within_the_minute_does_not_write(store: KeyStore) -> None:
    _, key = store.create("ci")
    store.verify(key)
    # The database and its WAL; the -shm index changes on reads too.
    files = [store.path, store.path.with_name(store.path.name + "-wal")]

    def snapshot() -> list[tuple[int, bytes]]:
        return [(p.stat().st_mtime_ns, p.read_bytes()) for p in files if p.exists()]

    before = snapshot()
    time.sleep(0.01)
    store.verify(key)
    assert snapshot() == before


# ------------------------------------------------------------------------ list, revoke


def test_list(store: KeyStore, clock: FakeClock) -> None:
    assert store.list() == []
    a, key_a = store.create("a")
    clock.now += 10
    b, _ = store.create("b", scopes=["admin"])
    clock.now += 10
    store.revoke("b")
    store.verify(key_a)
    listed = store.list()
    assert [r.id for r in listed] == [a.id, b.id]
    la, lb = listed
    assert (la.name, la.revoked_at, la.prefix) == ("a", None, f"ql-{a.id}")
    assert la.last_used_at == datetime.fromtimestamp(clock.now, UTC)
    assert la.created_at == a.created_at
    assert lb.revoked_at == datetime.fromtimestamp(clock.now, UTC)
    assert lb.last_used_at is None and lb.scopes == ("admin",)


def test_revoke_by_id_and_by_name(store: KeyStore) -> None:
    a, _ = store.create("a")
    b, _ = store.create("b")
    assert store.revoke(a.id).id == a.id
    assert store.revoke("b").id == b.id
    assert all(r.revoked for r in store.list())


def test_revoke_unknown(store: KeyStore) -> None:
    store.create("ci")
    with pytest.raises(NotFound, match="no API key with id or name 'nope'") as info:
        store.revoke("nope")
    assert info.value.status_code == 404


def test_revoke_twice_is_a_clear_error(store: KeyStore) -> None:
    record, _ = store.create("ci")
    store.revoke("ci")
    for target in ("ci", record.id):
        with pytest.raises(BadRequest, match=f"API key {record.id} \\(ci\\) was already revoked"):
            store.revoke(target)


def test_revoke_by_name_prefers_the_active_key(store: KeyStore, clock: FakeClock) -> None:
    old, _ = store.create("ci")
    store.revoke("ci")
    clock.now += 5
    new, _ = store.create("ci")
    assert store.revoke("ci").id == new.id


def test_errors_render_in_openai_format(store: KeyStore) -> None:
    with pytest.raises(NotFound) as info:
        store.revoke("nope")
    body = info.value.to_openai()["error"]
    assert body["type"] == "not_found_error" and body["code"] == "key_not_found"


# ------------------------------------------------------------------------- concurrency

_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from qingliang.platform.storage.keys import KeyStore

    db, go, tag, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    store = KeyStore(db, busy_timeout_s=60)
    deadline = time.time() + 60
    while not go.exists() and time.time() < deadline:
        time.sleep(0.005)
    made = []
    for i in range(count):
        _, key = store.create(f"{tag}-{i}")
        assert store.verify(key) is not None
        made.append(key)
    print(json.dumps(made))
    """
)


def test_two_processes_create_keys_concurrently(tmp_path: Path) -> None:
    db = tmp_path / "shared" / "state.sqlite"  # neither process has created it yet
    go = tmp_path / "go"
    count = 25
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(db), str(go), tag, str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for tag in ("p1", "p2")
    ]
    time.sleep(0.5)  # let both start and wait on the same signal
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out))
    store = KeyStore(db)
    listed = store.list()
    assert len(listed) == 2 * count
    assert {r.name for r in listed} == {f"{t}-{i}" for t in ("p1", "p2") for i in range(count)}
    for keys in outputs:
        assert len(keys) == count
        for key in keys:
            assert store.verify(key) is not None


def test_threads_share_one_store(store: KeyStore) -> None:
    errors: list[BaseException] = []
    made: list[str] = []
    lock = threading.Lock()

    def work(tag: int) -> None:
        try:
            for i in range(10):
                _, key = store.create(f"t{tag}-{i}")
                assert store.verify(key) is not None
                with lock:
                    made.append(key)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(made) == 40 and len(store.list()) == 40


def test_a_writer_in_another_process_is_waited_for(store: KeyStore) -> None:
    store.create("first")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(0.8)\n"
            "c.execute('COMMIT')\n",
            str(store.path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        record, key = store.create("second")  # waits for the lock instead of failing
        assert time.monotonic() - started > 0.3
        assert store.verify(key) is not None
    finally:
        holder.wait(timeout=30)
    assert holder.returncode == 0


def test_close_then_use_again(store: KeyStore) -> None:
    _, key = store.create("ci")
    store.close()
    store.close()  # twice is fine
    assert store.verify(key) is not None


def test_threads_after_close_reopen(store: KeyStore) -> None:
    _, key = store.create("ci")
    results: list[object] = []
    t = threading.Thread(target=lambda: results.append(store.verify(key)))
    t.start()
    t.join()
    store.close()  # closes the other thread's connection too
    t = threading.Thread(target=lambda: results.append(store.verify(key)))
    t.start()
    t.join()
    assert all(r is not None for r in results) and len(results) == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_opens_its_own_connection(store: KeyStore) -> None:
    import multiprocessing

    _, key = store.create("parent")  # the parent's connection is now open and cached

    def child(queue) -> None:
        try:
            _, child_key = store.create("child")
            queue.put((store.verify(key) is not None, child_key))
        except BaseException as exc:  # pragma: no cover - reported below
            queue.put((False, repr(exc)))

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=child, args=(queue,))
    proc.start()
    ok, child_key = queue.get(timeout=60)
    proc.join(timeout=60)
    assert ok, child_key
    assert store.verify(child_key) is not None
    assert {r.name for r in store.list()} == {"parent", "child"}


def test_docstring_example_runs() -> None:
    result = doctest.testmod(keys_mod)
    assert result.failed == 0 and result.attempted > 0


# ------------------------------------------------------------- issue 13: revoke, locks


def test_revoke_by_the_id_keys_list_prints(store: KeyStore) -> None:
    """`keys list` shows ``ql-<id>``; revoking by exactly that must work (it did not)."""
    record, key = store.create("app")
    shown = store.list()[0].prefix
    assert shown == f"ql-{record.id}"
    assert store.revoke(shown).revoked
    assert store.verify(key) is None


def test_revoke_by_the_whole_key(store: KeyStore) -> None:
    _record, key = store.create("app")
    store.revoke(key)
    assert store.verify(key) is None


def test_revoke_unknown_prefix_is_not_found(store: KeyStore) -> None:
    store.create("app")
    with pytest.raises(NotFound, match="ql-0123456789ab"):
        store.revoke("ql-0123456789ab")


def test_verify_does_not_wait_for_a_locked_store(tmp_path: Path) -> None:
    """Another process holding the write lock must not stall a key check for the busy
    timeout (it was 30 s, then a 500): the ``last_used_at`` write is skipped."""
    store = KeyStore(tmp_path / "state.sqlite")
    _record, key = store.create("app")
    other = sqlite3.connect(tmp_path / "state.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock, as another writer would
    try:
        started = time.monotonic()
        verified = store.verify(key)
        waited = time.monotonic() - started
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert verified is not None and verified.name == "app"
    assert verified.last_used_at is None  # not written this time
    assert waited < store._busy_timeout_s / 2  # not the 30 s busy timeout
    # Once the lock is gone the write happens.
    again = store.verify(key)
    assert again is not None and again.last_used_at is not None
