"""Processes that end without the interpreter's teardown (``exit_now``): the ``sesbeam``
command and the worker processes of local runs (``python -m sesbeam.pipeline.worker``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms.environments import SubprocessSDKEnvironment

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
