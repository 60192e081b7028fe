"""Processes that end without the interpreter's teardown (``exit_now``): the ``sesbeam``
command and the worker processes of local runs (``python -m sesbeam.pipeline.worker``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms.environments import SubprocessSDKEnvironment

from sesbeam.pipeline import worker
from sesbeam.pipeline.batch import DEFAULT_LOCAL_RUNNER, local_runner
from sesbeam.pipeline.worker import COMMAND_MODULE


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60)


def test_exit_now_does_what_a_normal_exit_does_first():
    done = _run("""
        import atexit, sys, threading, time
        from sesbeam.pipeline._exit import exit_now

        def late():
            time.sleep(0.3)
            print("thread done", flush=True)

        atexit.register(lambda: print("atexit ran"))
        threading.Thread(target=late).start()
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        sys.stdout.write("buffered, ")
        sys.stderr.write("to stderr")
        exit_now(3)
        print("not reached")
    """)
    assert done.returncode == 3
    assert done.stdout == "buffered, thread done\natexit ran\n"
    assert done.stderr == "to stderr"


def test_the_command_exits_with_main_s_code():
    usage = subprocess.run([sys.executable, "-m", "sesbeam", "batch", "--input", "x"],
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2
    assert "--input and --output are required" in usage.stderr
    assert subprocess.run([sys.executable, "-m", "sesbeam", "--help"], capture_output=True,
                          timeout=120).returncode == 0


def test_worker_processes_run_sesbeam_s_worker_module():
    options = PipelineOptions([f"--runner={DEFAULT_LOCAL_RUNNER}", "--direct_num_workers=2",
                               "--direct_running_mode=multi_processing"])
    runner = local_runner(options)
    assert isinstance(runner, FnApiRunner)
    environment = runner._default_environment
    assert isinstance(environment, SubprocessSDKEnvironment)
    assert environment.command_string.endswith(f" -m {COMMAND_MODULE}")
    assert sys.executable in environment.command_string
    # Beam would put back its own worker command if the mode stayed set.
    assert options.view_as(DirectOptions).direct_running_mode is None
    assert options.view_as(DirectOptions).direct_num_workers == 2
    direct = local_runner(PipelineOptions(["--runner=DirectRunner",
                                           "--direct_running_mode=multi_processing"]))
    assert isinstance(direct, FnApiRunner)
    assert local_runner(PipelineOptions(["--runner=DirectRunner", "--streaming",
                                         "--direct_running_mode=multi_processing"])) is None


# -- the fork server (``sesbeam.pipeline.worker.ForkServer``) ---------------------------------
def _fake_server(reply: bytes | None):
    """An abstract socket that answers one connection with ``reply`` (None: closes)."""
    name = f"sesbeam-test-{os.getpid()}-{os.urandom(4).hex()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)
    listener.listen(1)
    received = []

    def serve():
        conn, _ = listener.accept()
        with conn:
            received.append(worker._read_all(conn))
            if reply:
                conn.sendall(reply)
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return name, thread, received


@pytest.mark.parametrize("reply, code", [
    (b"started\n0\n", 0),
    (b"started\n3\n", 3),
    (b"started\n", 1),  # started, then died without a word
    (None, None),  # nothing started: the command runs the harness itself
])
def test_the_worker_command_takes_the_forked_worker_s_exit_code(reply, code):
    name, thread, received = _fake_server(reply)
    assert worker.run_in_fork_server(name, {"CONTROL_API_SERVICE_DESCRIPTOR": "x"}) == code
    thread.join(5)
    assert json.loads(received[0]) == {"env": {"CONTROL_API_SERVICE_DESCRIPTOR": "x"}}


def test_the_worker_command_without_a_fork_server_runs_the_harness_itself():
    assert worker.run_in_fork_server(f"sesbeam-test-none-{os.urandom(4).hex()}", {}) is None


def test_a_command_left_in_the_backlog_of_a_closing_server_runs_the_harness_itself():
    """A server closes its listener once it has forked its workers: a command whose
    connection was still waiting in the backlog is reset, and runs the harness itself."""
    name = f"sesbeam-test-{os.urandom(4).hex()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)
    listener.listen(4)
    got = []
    command = threading.Thread(target=lambda: got.append(
        worker.run_in_fork_server(name, {"A": "1"})))
    command.start()
    time.sleep(0.3)  # connected, request sent, waiting for the reply: never accepted
    listener.close()
    command.join(5)
    assert got == [None]


_IMPORTS = """
    import os
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to
    from sesbeam.pipeline import worker
    from sesbeam.pipeline.batch import DEFAULT_LOCAL_RUNNER, local_runner
"""

_IDLE_SERVER = """
    # A server asked for no worker is stopped, and reaped.
    assert worker.can_fork()
    idle = worker.ForkServer(1).start()
    pid = idle.pid
    stop_wait, worker._STOP_WAIT_S = worker._STOP_WAIT_S, 0.2
    idle.stop()
    try:
        os.waitpid(pid, os.WNOHANG)
        print("not reaped")
    except ChildProcessError:
        print("stopped")
    worker._STOP_WAIT_S = stop_wait
"""

#: A pipeline on two worker processes, with a fork server started for FORKS of them: the
#: kinds of worker its elements met, (forked, child of the server), must be KINDS.
_ON_FORK_SERVER = """
    assert worker.can_fork()  # no thread started here so far
    server = worker.ForkServer(FORKS).start()
    options = PipelineOptions([f"--runner={DEFAULT_LOCAL_RUNNER}", "--direct_num_workers=2",
                               "--direct_running_mode=multi_processing"])
    try:
        with beam.Pipeline(runner=local_runner(options), options=options) as p:
            seen = (p | beam.Create(list(range(40))) | beam.Reshuffle()
                    | beam.Map(lambda _, server=server.pid: (
                        worker.forked(), os.getppid() == server, os.getpid())))
            assert_that(seen | "Kind" >> beam.MapTuple(lambda f, p, pid: (f, p))
                        | "Kinds" >> beam.Distinct(), equal_to(KINDS), label="WorkerKinds")
            assert_that(seen | "Pid" >> beam.MapTuple(lambda f, p, pid: pid)
                        | "Pids" >> beam.Distinct()
                        | beam.combiners.Count.Globally(), equal_to([2]),
                        label="TwoWorkers")
    finally:
        server.stop()
    print("ok")
"""


def _on_fork_server(forks: int, kinds: list[tuple[bool, bool]]) -> str:
    return _ON_FORK_SERVER.replace("FORKS", str(forks)).replace("KINDS", repr(kinds))


@pytest.mark.slow
def test_forked_workers_run_the_pipeline():
    done = _run(_IMPORTS + _IDLE_SERVER + _on_fork_server(2, [(True, True)]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["stopped", "ok"]


@pytest.mark.slow
def test_a_worker_the_fork_server_was_not_started_for_runs_the_harness_itself():
    """The runner asks for more workers than the server forks: the server, by then a
    reaper, no longer listens, and the extra worker's command imports Beam and runs the
    harness itself; the pipeline runs on both."""
    done = _run(_IMPORTS + _on_fork_server(1, [(True, True), (False, False)]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ok"]
