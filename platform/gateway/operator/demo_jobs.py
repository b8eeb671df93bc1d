"""Start and stop the domain demonstrations from the gateway: ``qingliang demo up|down``
run as a job, its output kept.

A job is the real command line, ``python -m qingliang.platform.cli.main demo up gov
--no-train``, run in a subprocess of the gateway replica with ``QINGLIANG_HOME`` and the
running platform's ports (from its run file) in its environment, so it reaches the
cluster exactly as a user's terminal does. A thread reads its output (the last
:data:`TAIL_LINES` lines are kept) and records the job in ``$QINGLIANG_HOME/
demo_jobs.json`` when it starts, while it runs (at most once a second) and when it ends;
another gateway replica, or this one after a restart, reads the jobs there. A job whose
process is gone without an end recorded (its replica died) reads as failed.

One job per demonstration at a time: starting one while a job for the same demo (or for
``all``) runs is a :class:`~qingliang.platform.errors.Conflict`.

Which demos exist and which are up come from :mod:`qingliang.platform.control.demos`
(``select``, the ``Managed`` record ``demo up`` writes).

Example:
    >>> jobs = DemoJobs(Path("/tmp/ql"))                     # doctest: +SKIP
    >>> jobs.start("gov", "up", train=False)["status"]       # doctest: +SKIP
    'running'
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from qingliang.platform.errors import BadRequest, Conflict, NotFound

logger = logging.getLogger(__name__)

#: The record of jobs, under the data directory.
RECORD = "demo_jobs.sqlite"
#: Lines of a job's output kept (and answered as ``log_tail``).
TAIL_LINES = 200
#: Jobs kept in the record (the newest).
KEEP_JOBS = 50
#: How often a running job's output is written to the record, at most.
RECORD_EVERY_S = 1.0

#: Starts the command line with this environment; returns the process, its output
#: (stdout and stderr together) readable as text lines. The boundary unit tests replace.
Launch = Callable[[list[str], dict[str, str]], subprocess.Popen]


def launch(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """The real :data:`Launch`: a subprocess in its own session, output piped."""
    return subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )


@dataclass
class DemoJob:
    """One ``demo up`` / ``demo down`` run."""

    id: str
    action: str
    demos: list[str]
    status: str  # running | succeeded | failed
    started_at: float
    ended_at: float | None = None
    returncode: int | None = None
    pid: int | None = None
    train: bool = False
    approve: bool = False
    log_tail: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: A job recorded without its process yet (being started) counts as running this long.
STARTING_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS demo_jobs (
    id         TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    body       TEXT NOT NULL
);
"""


def _running(job: DemoJob) -> bool:
    """Whether the process of a job recorded as running is still there."""
    if job.pid is None:
        return time.time() - job.started_at < STARTING_S
    return _alive(job.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (not yet reaped) is gone
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return True


class DemoJobs:
    """The demos' catalogue and their jobs on the platform at ``home``.

    ``root`` is where the bundles are (default: ``deploy/domains`` or
    ``QINGLIANG_DEMOS_DIR``); ``environ`` gives the job's environment (default:
    :meth:`job_env`); ``launcher`` starts it (default: :func:`launch`).
    """

    def __init__(
        self,
        home: Path,
        *,
        root: Path | None = None,
        launcher: Launch | None = None,
        environ: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.home = Path(home)
        self.root = root
        self._launch = launcher or launch
        self._environ = environ or self.job_env
        self._lock = threading.Lock()
        self._jobs: dict[str, DemoJob] = {}
        self._threads: dict[str, threading.Thread] = {}

    # -- the record ---------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.home / RECORD

    def _db(self) -> Any:
        from qingliang.platform.storage.sqlite import open_db

        return open_db(self.path, _SCHEMA)

    def _recorded(self, conn: Any) -> dict[str, DemoJob]:
        jobs = {}
        for (body,) in conn.execute("SELECT body FROM demo_jobs ORDER BY started_at"):
            try:
                job = DemoJob(**json.loads(body))
            except (ValueError, TypeError) as exc:
                logger.warning("%s: a job record cannot be read (%s)", self.path, exc)
                continue
            jobs[job.id] = job
        for job in jobs.values():
            if job.status == "running" and job.id not in self._jobs and not _running(job):
                job.status = "failed"
                job.log_tail = [*job.log_tail, "(the gateway replica running this job stopped)"]
        return jobs

    def _save(self, job: DemoJob, conn: Any = None) -> None:
        from qingliang.platform.storage.sqlite import write

        if conn is None:
            with self._db() as own:
                self._save(job, own)
            return
        with self._lock:
            body = json.dumps(job.to_dict(), ensure_ascii=False)
        with write(conn):
            conn.execute(
                "INSERT INTO demo_jobs VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "body = excluded.body",
                (job.id, job.started_at, body),
            )
            conn.execute(
                "DELETE FROM demo_jobs WHERE id NOT IN "
                "(SELECT id FROM demo_jobs ORDER BY started_at DESC LIMIT ?)",
                (KEEP_JOBS,),
            )

    def jobs(self) -> list[DemoJob]:
        """Every recorded job, this replica's as they are now, oldest first."""
        if not self.path.exists():
            jobs: dict[str, DemoJob] = {}
        else:
            with self._db() as conn:
                jobs = self._recorded(conn)
        with self._lock:
            jobs.update({k: DemoJob(**v.to_dict()) for k, v in self._jobs.items()})
        return sorted(jobs.values(), key=lambda j: j.started_at)

    # -- the catalogue ------------------------------------------------------------------
    def catalog(self) -> list[dict[str, Any]]:
        """Each demonstration: name, title, summary, state (up or down), its newest job,
        its walkthrough as the console's steps and its sample pictures' names."""
        from qingliang.platform.control import demos

        up = demos.Managed(self.home / demos.RECORD).read()
        jobs = self.jobs()
        out = []
        for b in demos.select(["all"], self.root):
            mine = [j for j in jobs if b.name in j.demos]
            out.append(
                {
                    "name": b.name,
                    "title": b.spec.title,
                    "summary": b.spec.summary.strip(),
                    "state": "up" if b.name in up else "down",
                    "job": mine[-1].to_dict() if mine else None,
                    "steps": [step.to_dict() for step in b.spec.console],
                    "samples": list(b.samples()),
                }
            )
        return out

    def sample(self, name: str, file: str) -> tuple[Path, str]:
        """The sample picture ``file`` of demo ``name`` and its media type.

        Raises:
            NotFound: no such demo (``all`` is not one), or no such picture in its
                ``samples/`` (named).
        """
        from qingliang.platform.control import demos

        if name not in demos.DOMAINS:
            demos.select([name], self.root)  # the unknown name's message
            raise NotFound(f"demo {name!r} has no samples; name one of {', '.join(demos.DOMAINS)}")
        (bundle,) = demos.select([name], self.root)
        return bundle.sample(file)

    # -- running ------------------------------------------------------------------------
    def start(self, name: str, action: str, *, train: bool = False, approve: bool = False) -> dict:
        """Start ``qingliang demo ACTION NAME`` (``all``: every demo); returns the job.

        Raises:
            NotFound: no such demo (with a "did you mean").
            BadRequest: ``approve`` without ``train``.
            Conflict: a job for one of these demos is running.
        """
        from qingliang.platform.control import demos

        if action not in ("up", "down"):
            raise BadRequest(f"action {action!r}: up or down")
        if approve and not train:
            raise BadRequest("approve needs train: there is no training run to approve")
        targets = [b.name for b in demos.select([name], self.root)]
        job = DemoJob(
            id="demojob_" + secrets.token_hex(6),
            action=action,
            demos=targets,
            status="running",
            started_at=time.time(),
            train=train if action == "up" else False,
            approve=approve if action == "up" else False,
        )
        cmd = [sys.executable, "-m", "qingliang.platform.cli.main", "demo", action, name]
        if action == "up":
            cmd += ["--train" if train else "--no-train"] + (["--approve"] if approve else [])
        with self._db() as conn:
            self._claim(conn, job)  # checked and recorded in one transaction
            try:
                proc = self._launch(cmd, self._environ())
            except Exception as exc:
                job.status, job.ended_at = "failed", time.time()
                job.log_tail = [f"could not start the job: {type(exc).__name__}: {exc}"]
                self._save(job, conn)
                raise
            with self._lock:
                job.pid = proc.pid
                self._jobs[job.id] = job
            self._save(job, conn)
        thread = threading.Thread(
            target=self._follow, args=(job, proc), name=f"qingliang-{job.id}", daemon=True
        )
        self._threads[job.id] = thread
        thread.start()
        return job.to_dict()

    def _claim(self, conn: Any, job: DemoJob) -> None:
        """Record ``job``, unless a job for one of its demos runs (Conflict)."""
        from qingliang.platform.storage.sqlite import write

        with write(conn):
            jobs = self._recorded(conn)
            with self._lock:
                jobs.update(self._jobs)
            for other in jobs.values():
                both = sorted(set(other.demos) & set(job.demos))
                if other.status == "running" and both:
                    raise Conflict(
                        f"demo {', '.join(both)} has a job running ({other.action}, "
                        f"{other.id}); wait for it to end"
                    )
            conn.execute(
                "INSERT INTO demo_jobs VALUES (?, ?, ?)",
                (job.id, job.started_at, json.dumps(job.to_dict(), ensure_ascii=False)),
            )

    def _follow(self, job: DemoJob, proc: subprocess.Popen) -> None:
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        saved = time.monotonic()
        stream: IO[str] | None = proc.stdout
        try:
            for line in stream or ():
                tail.append(line.rstrip("\n"))
                with self._lock:
                    job.log_tail = list(tail)
                if time.monotonic() - saved > RECORD_EVERY_S:
                    self._save(job)
                    saved = time.monotonic()
        except Exception:  # the job goes on; its end is still recorded
            logger.exception("demo job %s: reading its output failed", job.id)
        code = proc.wait()
        with self._lock:
            job.returncode = code
            job.status = "succeeded" if code == 0 else "failed"
            job.ended_at = time.time()
            job.log_tail = list(tail)
        self._save(job)
        logger.info("demo job %s (%s %s) ended: %s", job.id, job.action, job.demos, job.status)

    def wait(self, job_id: str, timeout_s: float) -> dict | None:
        """The job once it ended (None if still running after ``timeout_s``)."""
        thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout_s)
        job = self._jobs.get(job_id)
        return None if job is None or job.status == "running" else job.to_dict()

    def job_env(self) -> dict[str, str]:
        """The job's environment: this process's, with the platform's data directory and
        ports (so the CLI talks to this platform) and plain, wide output."""
        from qingliang.platform.control.cluster import ray_env, settings_for

        settings = settings_for(self.home)
        return {
            **ray_env(),
            "QINGLIANG_HOME": str(self.home),
            "QINGLIANG_HTTP_PORT": str(settings.http_port),
            "QINGLIANG_DASHBOARD_PORT": str(settings.dashboard_port),
            "QINGLIANG_METRICS_PORT": str(settings.metrics_port),
            "QINGLIANG_RAY_PORT": str(settings.ray_port),
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
            "TERM": "dumb",
            "COLUMNS": "200",
        }
