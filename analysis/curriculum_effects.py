"""Paired curriculum differences with bootstrap intervals, and the fine-tuning vs zero-shot Pareto front.

    python analysis/curriculum_effects.py [SWEEP_DIR] [--out REPORT_DIR]
"""

import sys

from classit.analysis.report import main

if __name__ == "__main__":
    sys.exit(main("curriculum_effects", description=__doc__))
