"""The worker processes of a local run (``--direct_running_mode multi_processing``).

``local_runner`` gives the FnApiRunner the command ``python -m sesbeam.pipeline.worker``
for its worker processes. That command runs Beam's SDK harness
(``apache_beam.runners.worker.sdk_worker_main``) unchanged, in one of two ways:

- **Forked** (Linux): ``run_batch`` starts a *fork server* (``ForkServer``) before the
  pipeline, a copy of its own process made with ``os.fork`` once Beam, pyarrow and
  sesbeam are imported and before any thread starts. The command then only connects to
  it, hands over its environment (the runner's addresses among it) and waits: the server
  forks a worker that has nothing left to import and runs the harness, and the command
  exits with that worker's exit code. A fresh Python process spends about two seconds
  importing Beam before it can take work, while the runner waits for it. Once it has
  forked the workers it was started for, the server replaces itself with a small process
  that only reaps them (``_REAPER``), so the process tree stays whole and holds no third
  copy of the imports.
- **Started afresh**: without a fork server, or when it cannot be reached, the command
  imports Beam and runs the harness itself.

Either way the process ends with ``exit_now`` when the harness returns: the runner stops
its workers one after the other, each waiting for the previous one's interpreter
teardown (about a second each).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time

from sesbeam.pipeline._exit import exit_now

__all__ = ["COMMAND_MODULE", "FORK_SERVER_ENV", "ForkServer", "can_fork", "forked", "main",
           "run_in_fork_server"]

COMMAND_MODULE = "sesbeam.pipeline.worker"
#: The abstract Unix socket name of the run's fork server, in the runner's environment.
FORK_SERVER_ENV = "SESBEAM_FORK_SERVER"
#: What the fork server becomes once it has forked its workers: a process that only
#: reaps them (a few MiB instead of the imports).
_REAPER = ("import os\nwhile True:\n    try:\n        os.wait()\n"
           "    except ChildProcessError:\n        break\n")
_STARTED = b"started\n"
#: How long ``ForkServer.stop`` waits for the server to end on its own.
_STOP_WAIT_S = 2.0
_forked = False


def forked() -> bool:
    """Whether this process is a worker forked by a ``ForkServer``."""
    return _forked


def can_fork() -> bool:
    """Whether a ``ForkServer`` can start here: Linux (abstract sockets, ``fork``) and no
    thread but this one (a fork copies only the calling thread; anything another thread
    held, such as a lock, would stay held in the copy forever)."""
    return sys.platform.startswith("linux") and threading.active_count() == 1


class ForkServer:
    """A copy of this process that forks ``workers`` local worker processes on request.

    Start it before the pipeline (``start``), with ``FORK_SERVER_ENV`` then set for the
    workers' commands, and ``stop`` it after (it is gone already when all its workers
    were asked for; ``stop`` ends it otherwise and reaps it).
    """

    def __init__(self, workers: int):
        self.workers = workers
        self.name = f"sesbeam-{os.getpid()}-{os.urandom(6).hex()}"
        self.pid: int | None = None

    def start(self) -> "ForkServer":
        if not can_fork():
            raise RuntimeError("a fork server needs Linux and no other thread")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind("\0" + self.name)
        listener.listen(self.workers)
        pid = os.fork()
        if pid == 0:  # the server: never returns
            try:
                _serve(listener, self.workers)
            finally:
                os._exit(1)
        listener.close()
        self.pid = pid
        os.environ[FORK_SERVER_ENV] = self.name
        return self

    def stop(self) -> None:
        os.environ.pop(FORK_SERVER_ENV, None)
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        try:
            # Its workers reported their exit codes just before ending: the reaper ends
            # right after them. A server still waiting for workers never asked for is
            # stopped.
            deadline = time.monotonic() + _STOP_WAIT_S
            while os.waitpid(pid, os.WNOHANG)[0] == 0:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGTERM)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.005)
        except (ChildProcessError, ProcessLookupError):
            pass


def _serve(listener: socket.socket, workers: int) -> None:
    """The fork server: one forked worker per connection, then the reaper."""
    for _ in range(workers):
        conn, _ = listener.accept()
        request = _read_all(conn)
        if os.fork() == 0:
            listener.close()
            _run_forked(conn, request)  # never returns
        conn.close()  # the worker alone holds it: its end tells the command
    listener.close()
    os.execv(sys.executable, [sys.executable, "-S", "-c", _REAPER])


def _read_all(conn: socket.socket) -> bytes:
    """Everything ``conn`` receives until its end. A reset ends it too: a connection still
    in the server's backlog when the server closes its listener (it has forked all its
    workers) is reset without a byte, and the command then runs the harness itself."""
    chunks = []
    try:
        while chunk := conn.recv(1 << 16):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def _run_forked(conn: socket.socket, request: bytes) -> None:
    """A forked worker: the command's environment, then the harness. It tells the command
    over ``conn`` that it started (``_STARTED``), then its exit code as it ends."""
    global _forked
    _forked = True
    code = 1
    try:
        conn.sendall(_STARTED)
        import logging

        env = json.loads(request)["env"]
        os.environ.clear()
        os.environ.update(env)
        root = logging.getLogger()  # as in a new process: the harness sets up its own
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        from apache_beam.runners.worker import sdk_worker_main

        sdk_worker_main.main([sys.executable, "-m", COMMAND_MODULE])
        code = 0
    except BaseException:  # noqa: BLE001 - reported, then the exit code says it
        import traceback

        traceback.print_exc()
    finally:
        def report():
            try:
                conn.sendall(b"%d\n" % code)
            except OSError:
                pass

        exit_now(code, last=report)


def run_in_fork_server(name: str, env: dict[str, str]) -> int | None:
    """Have the fork server ``name`` run a worker with ``env``; its exit code, or None
    when no worker started (the server cannot be reached or went away: run the harness
    here instead). A worker that started and died without a word gives 1."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect("\0" + name)
    except OSError:
        conn.close()
        return None
    with conn:
        try:
            conn.sendall(json.dumps({"env": env}).encode())
            conn.shutdown(socket.SHUT_WR)
        except OSError:  # the server went away before forking: nothing ran
            return None
        reply = _read_all(conn)
    if not reply.startswith(_STARTED):
        return None
    code = reply[len(_STARTED):].strip()
    return int(code) if code.isdigit() else 1


def main(argv: list[str] | None = None) -> None:
    name = os.environ.get(FORK_SERVER_ENV)
    if name:
        code = run_in_fork_server(name, dict(os.environ))
        if code is not None:
            sys.stdout.flush()
            os._exit(code)
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv if argv is None else argv)
    exit_now(0)


if __name__ == "__main__":
    main()
