"""fANOVA importance of the swept parameters (Optuna).

    python analysis/importance.py [SWEEP_DIR] [--out REPORT_DIR]
"""

import sys

from classit.analysis.report import main

if __name__ == "__main__":
    sys.exit(main("importance", description=__doc__))
