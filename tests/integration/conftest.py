import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# pytester's in-process runs restore sys.modules afterwards; import the ML stack once here so
# the inner runs reuse it (C extensions cannot be loaded twice in one process).
import datasets  # noqa: E402,F401
import peft  # noqa: E402,F401
import torch  # noqa: E402,F401
import transformers  # noqa: E402,F401
