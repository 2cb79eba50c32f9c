"""The CLASS-IT views: scores per curriculum and model size, per-task z-scores, box plots.

    python analysis/paper_tables.py [SWEEP_DIR] [--out REPORT_DIR]
"""

import sys

from classit.analysis.report import main

if __name__ == "__main__":
    sys.exit(main("paper_tables", description=__doc__))
