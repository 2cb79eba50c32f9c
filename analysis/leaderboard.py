"""One row per configuration: mean +- std over seeds per task, and z-score aggregates.

    python analysis/leaderboard.py [SWEEP_DIR] [--out REPORT_DIR]
"""

import sys

from classit.analysis.report import main

if __name__ == "__main__":
    sys.exit(main("leaderboard", description=__doc__))
