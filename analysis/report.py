"""Every analysis, then one self-contained HTML report (the same as `classit report`).

    python analysis/report.py [SWEEP_DIR] [--out REPORT_DIR]
"""

import sys

from classit.analysis.report import main

if __name__ == "__main__":
    sys.exit(main("report", description=__doc__))
