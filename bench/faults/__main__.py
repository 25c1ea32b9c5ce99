"""``python -m bench.faults`` (or ``python bench/faults``)."""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a folder: python bench/faults
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.faults.run import main

sys.exit(main())
