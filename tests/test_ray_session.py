"""`ray_session`: a local Ray started for a command leaves nothing of its own behind in $TMPDIR."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

SCRIPT = """
import json, multiprocessing, os

from classit.ray_session import ray_session

def forkserver_folders():
    return sorted(name for name in os.listdir(os.environ["TMPDIR"]) if name.startswith("pymp-"))

with multiprocessing.get_context("forkserver").Pool(1) as pool:  # the caller's own forkserver, kept running
    pool.map(abs, [1])
before = forkserver_folders()
with ray_session(num_cpus=1, include_dashboard=True):  # Ray's dashboard starts a forkserver of its own
    during = forkserver_folders()
print(json.dumps({"before": before, "during": during, "after": forkserver_folders()}))
"""


def test_a_local_ray_leaves_no_forkserver_folder_and_the_callers_own_is_kept():
    temp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: Ray's socket paths (Ray's own folder) live under it
    try:
        done = subprocess.run([sys.executable, "-c", SCRIPT], env={**os.environ, "TMPDIR": temp},
                              capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    folders = json.loads(done.stdout.strip().splitlines()[-1])
    # Ray kills its dashboard's forkserver at shutdown, before it can remove its folder.
    assert len(folders["before"]) == 1 and len(folders["during"]) == 2
    assert folders["after"] == folders["before"]
