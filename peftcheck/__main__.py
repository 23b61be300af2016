"""python -m peftcheck"""

import sys

from peftcheck.cli import main

sys.exit(main())
