"""A throwaway PostgreSQL server for tests, or the one ``QINGLIANG_TEST_PG_DSN`` names.

:func:`postgres_server` yields a superuser DSN. Without the variable it runs ``initdb`` and
``postgres`` from the server binaries (``/usr/lib/postgresql/*/bin`` or ``PATH``) in a
fresh temporary folder: TCP on 127.0.0.1 only, on a free port, password (SCRAM)
authentication, its unix socket inside that folder, ``fsync=off``. PostgreSQL refuses to
run as root, so as root the server runs as the ``postgres`` OS user. The postmaster is a
child of this process; on exit it is stopped (``pg_ctl stop -m immediate``, then SIGKILL
to that one PID if it is still there) and the folder is removed. When neither the
variable nor the binaries are there, :class:`PostgresUnavailable` says so (the
``postgres_dsn`` fixture in tests/conftest.py turns it into a skip).

:func:`create_database` makes a fresh database on that server and returns its DSN, so
each test can have its own.

Example:
    >>> with postgres_server() as dsn:                      # doctest: +SKIP
    ...     db = create_database(dsn, "registry_test")
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

ENV_DSN = "QINGLIANG_TEST_PG_DSN"
OS_USER = "postgres"
START_TIMEOUT_S = 60


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL for the tests: neither ``QINGLIANG_TEST_PG_DSN`` nor server binaries."""


def find_bindir() -> Path | None:
    """The folder with ``initdb``, ``pg_ctl`` and ``postgres`` (newest version first)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for folder in candidates:
        if all(os.access(Path(folder) / b, os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a superuser DSN: ``QINGLIANG_TEST_PG_DSN``, or a throwaway local server."""
    dsn = os.environ.get(ENV_DSN)
    if dsn:
        yield dsn
        return
    bindir = find_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            f"no PostgreSQL: {ENV_DSN} is not set and no server binaries (initdb, pg_ctl, "
            "postgres) were found in /usr/lib/postgresql/*/bin or on PATH"
        )
    as_user: dict = {}
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam(OS_USER)
        except KeyError:
            raise PostgresUnavailable(
                f"no PostgreSQL: {ENV_DSN} is not set, and running as root needs an OS user "
                f"{OS_USER!r} to run the server (PostgreSQL refuses root)"
            ) from None
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    root = Path(tempfile.mkdtemp(prefix="qingliang-pg-"))
    server = _Server(bindir, root, as_user)
    try:
        if as_user:
            os.chown(root, as_user["user"], as_user["group"])
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


class _Server:
    """One ``initdb`` + ``postgres`` under ``root``, the postmaster a child of this process
    (so it is reaped, and :meth:`stop` ends only it)."""

    def __init__(self, bindir: Path, root: Path, as_user: dict) -> None:
        self.bindir, self.root, self.as_user = bindir, root, as_user
        self.data = root / "data"
        self.log = root / "server.log"
        self.proc: subprocess.Popen | None = None

    def _run(self, tool: str, *args: str, timeout: float = START_TIMEOUT_S) -> None:
        out = subprocess.run(
            [str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            **self.as_user,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{tool} failed ({out.returncode}): {out.stderr[-2000:]}")

    def start(self) -> str:
        password = secrets.token_hex(16)
        pwfile = self.root / "pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        if self.as_user:
            os.chown(pwfile, self.as_user["user"], self.as_user["group"])
        self._run(
            "initdb",
            f"--pgdata={self.data}",
            "--username=postgres",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        # A free port can be taken between the probe and the bind: try a few.
        for _attempt in range(3):
            port = _free_port()
            if self._start_on(port):
                log.debug("test PostgreSQL pid %s on 127.0.0.1:%s", self.proc.pid, port)  # type: ignore[union-attr]
                return f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"the test PostgreSQL server did not start:\n{tail}")

    def _start_on(self, port: int) -> bool:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(self.root),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "40",
        }
        args = [a for k, v in settings.items() for a in ("-c", f"{k}={v}")]
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), *args],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, not it
                **self.as_user,
            )
        pidfile = self.data / "postmaster.pid"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            with contextlib.suppress(OSError):
                lines = pidfile.read_text().splitlines()
                # Line 8 of postmaster.pid is the server's status ("ready" once it accepts).
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return True
            time.sleep(0.05)
        self.stop()
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "stop", "-m", "immediate", "-w", "-D", str(self.data), timeout=30)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()  # only the postmaster this process started
            proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_database(dsn: str, name: str) -> str:
    """Create database ``name`` (dropping an old one of that name); return its DSN."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(dsn, name)


def drop_database(dsn: str, name: str) -> None:
    """Drop database ``name`` if it exists (closing its connections)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def with_database(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` (URL or ``key=value`` form, kept as given)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        return urlunsplit(parts._replace(path="/" + name))
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, dbname=name)


INSTALL = "apt-get install -y --no-install-recommends postgresql"


def ensure() -> None:
    """Install Debian's PostgreSQL server with apt if its binaries are missing and we are
    root (``make test`` runs this file first); otherwise say how. Never fails: without a
    server the PostgreSQL-backed tests skip, saying why."""
    if find_bindir() is not None or os.environ.get(ENV_DSN):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            for cmd in (["apt-get", "update", "-q"], [*INSTALL.split(), "-q"]):
                print("+", " ".join(cmd), flush=True)
                subprocess.run(cmd, env=env, check=True, timeout=1200, stdout=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"apt-get failed ({exc}); the PostgreSQL-backed tests will skip", flush=True)
    if find_bindir() is None:
        print(
            "the PostgreSQL-backed tests skip: no PostgreSQL server binaries "
            f"(/usr/lib/postgresql/*/bin); install them with: sudo {INSTALL}",
            flush=True,
        )


if __name__ == "__main__":
    ensure()
