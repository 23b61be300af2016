import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The ML stack is imported once before any pytester run: tests/conftest.py (issue 24).
