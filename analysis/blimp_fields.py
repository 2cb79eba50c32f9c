"""BLiMP accuracy by field and checkpoint, as a heatmap.

    python analysis/blimp_fields.py [SWEEP_DIR] [--out REPORT_DIR]
"""

import sys

from classit.analysis.report import main

if __name__ == "__main__":
    sys.exit(main("blimp_fields", description=__doc__))
