"""``python -m sesbeam`` is the ``sesbeam`` command."""

from sesbeam.pipeline.cli import run

run()
