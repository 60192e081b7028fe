"""``python -m sesbeam.schemas [--update README.md]``: print or refresh the table reference."""

from __future__ import annotations

import sys

from sesbeam.schemas import readme_tables, update_readme

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--update":
        changed = update_readme(sys.argv[2])
        print(f"{sys.argv[2]}: {'updated' if changed else 'already up to date'}")
    else:
        print(readme_tables(), end="")
