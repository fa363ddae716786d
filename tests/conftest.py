"""Make the collection importable as ansible_collections.kernelfence.isolation from a checkout."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO / ".collections", REPO):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
