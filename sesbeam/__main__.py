"""``python -m sesbeam`` is the ``sesbeam`` command."""

import sys

from sesbeam.pipeline.cli import main

sys.exit(main())
