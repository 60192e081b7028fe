"""The worker processes of a local run (``--direct_running_mode multi_processing``).

``python -m sesbeam.pipeline.worker`` runs Beam's SDK harness
(``apache_beam.runners.worker.sdk_worker_main``) unchanged, and ends the process with
``exit_now`` when the harness returns: the runner stops its workers one after the other,
each waiting for the previous one's interpreter teardown (about a second each).
``local_runner`` gives the FnApiRunner this command for its worker processes.
"""

from __future__ import annotations

import sys

from sesbeam.pipeline._exit import exit_now

__all__ = ["COMMAND_MODULE", "main"]

COMMAND_MODULE = "sesbeam.pipeline.worker"


def main(argv: list[str] | None = None) -> None:
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(sys.argv if argv is None else argv)
    exit_now(0)


if __name__ == "__main__":
    main()
