"""`ray up cluster-onprem.yaml` for real: an SSH server on a loopback address, a throwaway user and
key, the shipped file with only the host, the login and this machine's torch build changed, then
`ray job submit` of sweeps/configs/cluster_check.yaml, its Parquet results read back, `ray down`.

Needs root (it installs openssh-server and rsync from Debian's archive and adds a user); skipped
with the reason otherwise. Nothing it made is left: no Ray process, no SSH server, no user, no key.
"""

import getpass
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from classit.results import read_table

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
SSHD = "/usr/sbin/sshd"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("apt-get"),
    reason="needs root and apt-get: installs openssh-server and rsync from Debian's archive, adds a user")


def run(cmd: list[str], timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    print(f"{time.perf_counter() - started:6.1f} s  {' '.join(cmd[:4])}")  # shown with -s or on failure
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def install_missing_packages() -> None:
    """openssh-server and rsync (and venv for the system Python), from Debian's archive."""
    wanted = [pkg for pkg, present in [
        ("openssh-server", Path(SSHD).exists()),
        ("rsync", shutil.which("rsync") is not None),
        ("python3-venv", run(["/usr/bin/python3", "-c", "import ensurepip"], check=False).returncode == 0),
    ] if not present]
    if not wanted:
        return
    # A policy that refuses service starts: installing openssh-server must not start the system's sshd.
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *wanted]
        if run(install, timeout=600, check=False, env=env).returncode != 0:
            run(["apt-get", "update", "-q"], timeout=600, env=env)
            run(install, timeout=600, env=env)
    finally:
        if own_policy:
            policy.unlink()


def free_loopback_address() -> str:
    """A loopback address whose port 22 is free (ray up's ssh always dials port 22)."""
    for last in range(2, 250):
        address = f"127.0.{os.getpid() % 250}.{last}"
        with socket.socket() as probe:
            try:
                probe.bind((address, 22))
            except OSError:
                continue
            return address
    pytest.skip("port 22 is taken on every loopback address tried (an SSH server listening on 0.0.0.0:22)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pip_settings() -> str:
    """This machine's pip configuration (its package sources), for the cluster user's pip.conf:
    the same sources on every host, as a site's own package mirror would be. Installs skip
    byte-compiling every module (torch's, Ray's...): each test run sets up a fresh environment, and
    compiling all of it was half of `ray up` (95 s against 47 s for torch and classit's
    dependencies on a 2-core machine); the job's processes compile what they import, once."""
    lines = run([sys.executable, "-m", "pip", "config", "list"]).stdout.splitlines()
    settings = {}
    for line in lines:
        name, _, value = line.partition("=")
        settings[name.split(".", 1)[1]] = value.strip("'")
    return "[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()) + "[install]\ncompile = false\n"


@pytest.fixture(scope="module")
def ssh_host():
    """An sshd on <loopback address>:22 that lets one throwaway user in with one throwaway key."""
    install_missing_packages()
    root = Path(tempfile.mkdtemp(prefix="cu", dir="/tmp"))  # short: Ray's socket paths live under it
    root.chmod(0o755)
    user = f"classit-up-{os.getpid()}"
    home = root / "home"
    sshd = None
    privsep = Path("/run/sshd")
    own_privsep = not privsep.exists()
    try:
        run(["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/bash",
             "--password", "*", user])  # "*": no password, but not a locked account sshd refuses
        for name in ("key", "host_key"):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)])
        (home / ".ssh").mkdir(mode=0o700)
        (home / ".ssh" / "authorized_keys").write_text((root / "key.pub").read_text())
        (home / ".config" / "pip").mkdir(parents=True)
        (home / ".config" / "pip" / "pip.conf").write_text(pip_settings())
        (root / "tmp").mkdir()
        run(["chown", "-R", f"{user}:{user}", str(home), str(root / "tmp")])
        address = free_loopback_address()
        (root / "sshd_config").write_text(
            f"ListenAddress {address}:22\nHostKey {root / 'host_key'}\nPidFile none\nUsePAM no\n"
            f"AllowUsers {user}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            # The user's temporary files, Ray's sessions among them, stay in this test's folder.
            f"SetEnv TMPDIR={root / 'tmp'} RAY_TMPDIR={root / 'tmp'}\n")
        privsep.mkdir(mode=0o755, exist_ok=True)
        sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")],
                                stdout=subprocess.DEVNULL, stderr=open(root / "sshd.log", "w"))
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex((address, 22)) == 0:
                    break
            time.sleep(0.1)
        yield {"address": address, "user": user, "key": root / "key", "root": root}
    finally:
        if sshd is not None:
            sshd.kill()
            sshd.wait()
        subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True)
        time.sleep(1)
        subprocess.run(["userdel", "--remove", user], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        if own_privsep:
            shutil.rmtree(privsep, ignore_errors=True)
    assert subprocess.run(["id", user], capture_output=True).returncode != 0, f"user {user} left behind"
    assert not root.exists() and (sshd is None or sshd.poll() is not None)


def onprem_for(host: dict, gcs_port: int, dashboard_port: int) -> dict:
    """cluster-onprem.yaml as shipped, pointed at the loopback host: its address and login, no
    workers, this machine's CPU torch (the CUDA index is not reachable here) and free ports."""
    config = yaml.safe_load((REPO / "cluster-onprem.yaml").read_text())
    config["cluster_name"] = host["user"]
    config["provider"].update(head_ip=host["address"], worker_ips=[])
    config["max_workers"] = 0
    config["auth"] = {"ssh_user": host["user"], "ssh_private_key": str(host["key"])}
    torch_lines = [i for i, cmd in enumerate(config["setup_commands"]) if "install -q torch==" in cmd]
    assert len(torch_lines) == 1, config["setup_commands"]
    config["setup_commands"][torch_lines[0]] = "~/classit-env/bin/pip install -q torch==2.13.0"
    start = config["head_start_ray_commands"]
    assert sum("--port=6379" in cmd for cmd in start) == 1, start
    config["head_start_ray_commands"] = [
        cmd.replace("--port=6379", f"--port={gcs_port} --dashboard-port={dashboard_port}") for cmd in start]
    return config


def user_processes(user: str) -> list[str]:
    done = subprocess.run(["pgrep", "-a", "-u", user], capture_output=True, text=True)
    return done.stdout.splitlines()


def test_ray_up_runs_a_sweep_job_on_the_onprem_file_and_ray_down_stops_it(ssh_host):
    root, user = ssh_host["root"], ssh_host["user"]
    gcs_port, dashboard_port = free_port(), free_port()
    cluster_file = root / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(onprem_for(ssh_host, gcs_port, dashboard_port)))
    shared = root / "shared"  # what /mnt/shared is on a real cluster
    shared.mkdir()
    run(["chown", f"{user}:{user}", str(shared)])
    # The launching machine's side, kept in this test's folder too: its home (Ray's token),
    # Ray's config cache and the local provider's cluster state.
    launcher = root / "launcher"
    (launcher / "tmp").mkdir(parents=True)
    env = {**os.environ, "HOME": str(launcher), "TMPDIR": str(launcher / "tmp"),
           "RAY_TMPDIR": str(launcher / "tmp"), "PATH": f"{Path(RAY).parent}:{os.environ['PATH']}"}
    control_dir = Path("/tmp") / ("ray_ssh_" + hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10])
    cluster_control = control_dir / hashlib.sha256(user.encode()).hexdigest()[:10]
    try:
        # docs/cluster.md's steps, in order: a token, ray up, submit, ray down.
        run([RAY, "get-auth-token", "--generate"], env=env)
        run([RAY, "up", "-y", "--no-config-cache", str(cluster_file)], timeout=1200, env=env, cwd=REPO)
        assert (Path(ssh_host["root"]) / "home" / "classit" / "classit" / "cli.py").exists()  # synced
        job = run([RAY, "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}", "--working-dir", ".",
                   "--", "python", "sweeps/curriculum_sweep.py", "--config", "sweeps/configs/cluster_check.yaml",
                   "--address", "auto", "--set", f"run.storage_path={shared / 'runs'}",
                   "--set", f"run.cache_dir={shared / 'cache'}"],
                  timeout=1500, env={**env, "RAY_AUTH_MODE": "token"}, cwd=REPO)
        assert "succeeded" in job.stdout, job.stdout[-3000:]

        results = shared / "runs" / "cluster_check" / "results"
        trials = read_table(str(results / "trials"))
        assert sorted(trials["param.curriculum"]) == ["pt", "switch"]
        assert (trials["status"] == "finished").all() and trials["blimp:average:accuracy"].between(0, 100).all()
        scores = read_table(str(results / "eval_scores"))
        assert set(scores["trial"]) == set(trials["trial"]) and (scores["error"] == "").all()
        # Without the token a client is turned away (token authentication is on).
        denied = run([RAY, "job", "list", "--address", f"http://127.0.0.1:{dashboard_port}"], check=False,
                     env={**env, "HOME": str(root)})
        assert denied.returncode != 0
    finally:
        down = run([RAY, "down", "-y", str(cluster_file)], timeout=300, check=False, env=env, cwd=REPO)
        shutil.rmtree(cluster_control, ignore_errors=True)
        if control_dir.exists() and not any(control_dir.iterdir()):
            control_dir.rmdir()
    assert down.returncode == 0, down.stderr[-3000:]
    # `ray down` stops the head's Ray: no raylet or GCS server of the cluster user survives it.
    for _ in range(30):
        left = [p for p in user_processes(user) if "raylet" in p or "gcs_server" in p]
        if not left:
            break
        time.sleep(1)
    assert not left, left
