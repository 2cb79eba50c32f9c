"""Validation loss and scores against words seen, from the word-budget checkpoints.

    python analysis/learning_curves.py [SWEEP_DIR] [--out REPORT_DIR]
"""

import sys

from classit.analysis.report import main

if __name__ == "__main__":
    sys.exit(main("learning_curves", description=__doc__))
