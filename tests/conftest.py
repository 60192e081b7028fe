"""Shared test set-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
#: Real sample events from public projects, kept beside the repository (not copied in).
PUBLIC_FIXTURES = Path(os.environ.get("SESBEAM_PUBLIC_FIXTURES",
                                      REPO.parent / "shared" / "fixtures" / "public"))


@pytest.fixture(scope="session")
def public_fixtures() -> Path:
    if not PUBLIC_FIXTURES.is_dir():
        pytest.skip(f"public fixtures not found at {PUBLIC_FIXTURES} (they live in ../shared, "
                    "beside the repository; set SESBEAM_PUBLIC_FIXTURES to point elsewhere)")
    return PUBLIC_FIXTURES
