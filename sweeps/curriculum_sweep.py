"""Run a curriculum sweep: `python sweeps/curriculum_sweep.py [--config FILE] [--address auto] [--resume] [--dry-run]`.

With no argument it runs the embedded default (`sweeps/configs/demo.yaml`: the tiny model on the
synthetic corpus, local Ray). The same as `classit sweep ...`.
"""

import sys

from classit.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
