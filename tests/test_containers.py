"""Containers for real: busybox images run in namespaces on overlayfs, committed, removed.

Everything here mounts and makes namespaces, so it needs root (CI runs as root).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import pty
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import termios
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import layerdiff
from layerdiff import layercache, runtime
from layerdiff.catalog import load_image
from layerdiff.errors import ContainerError, ContainerNotFoundError
from layerdiff.layout import Layout
from tests import seccomp
from tests.conftest import run_cli
from tests.containers import busybox_rootfs
from tests.stacks import F, H, layer_tar, load_layers

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A busybox image in its own OCI layout, with Cmd ["sh"]."""
    base = tmp_path_factory.mktemp("busybox")
    root = busybox_rootfs(base / "rootfs")
    ref = f"oci:{base / 'layout'}:1"
    layerdiff.commit(root, image=ref, changes=['CMD ["sh"]'])
    return ref


def sh(image: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("run", "--rm", *args, image, "--", "sh", "-c", script)


def layer_members(image: str) -> dict[str, tarfile.TarInfo]:
    """The entries of an image's top layer, read by Python's tarfile."""
    img = load_image(image)
    with tarfile.open(img.layout.blob_path(img.layers[-1]["digest"])) as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


def mounts_mentioning(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if str(path) in line]


def test_run_commit_gives_exactly_the_changes(image: str, store_home: Path) -> None:
    script = (
        "echo new > /root/new.txt; rm /bin/vi; echo extra >> /etc/passwd; "
        "mkdir -p /opt/app; echo 1 > /opt/app/conf; rm -r /var; "
        "echo 10.0.0.9 db >> /etc/hosts; echo other > /etc/hostname; echo x > /etc/resolv.conf"
    )
    done = run_cli("run", "--name", "c1", image, "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    result = run_cli("commit", "--progress", "none", "--json", "c1", "app:2", "-m", "changed")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["image"] == "app:2"

    members = layer_members("app:2")
    files = {n for n, m in members.items() if not m.isdir()}
    assert files == {
        "root/new.txt",
        "bin/.wh.vi",
        "etc/passwd",
        "opt/app/conf",
        ".wh.var",
    }
    for init_file in runtime.INIT_FILES:
        assert init_file not in members

    check = sh(
        "app:2",
        "cat /root/new.txt /opt/app/conf; tail -1 /etc/passwd; test -e /bin/vi || echo no-vi; "
        "test -e /var || echo no-var; grep -c db /etc/hosts; cat /etc/hostname",
        "--hostname",
        "fresh",
    )
    assert check.returncode == 0, check.stderr
    assert check.stdout.split() == ["new", "1", "extra", "no-vi", "no-var", "0", "fresh"]
    history = layerdiff.history("app:2")
    assert history[0].comment == "changed"
    assert len(load_image("app:2").layers) == 2


@pytest.fixture
def overlay_index_on_by_default() -> Iterator[None]:
    """The overlay module's default made ``index=on``, as some kernels are built."""
    param = Path("/sys/module/overlay/parameters/index")
    if not param.exists():
        pytest.skip("overlay module parameters not available")
    before = param.read_text().strip()
    param.write_text("Y")
    try:
        yield
    finally:
        param.write_text(before)


def test_container_overlay_has_no_inode_index_whatever_the_kernel_default(
    image: str, tmp_path: Path, store_home: Path, overlay_index_on_by_default: None
) -> None:
    """With the index, writing one name of a hard-link set changes the others in place, which
    the upper dir does not record: the runtime mounts without it, so the commit is right."""
    root = busybox_rootfs(tmp_path / "rootfs")
    (root / "data").mkdir()
    (root / "data" / "a").write_text("7")
    os.link(root / "data" / "a", root / "data" / "b")
    base = f"oci:{tmp_path / 'layout'}:links"
    layerdiff.commit(root, image=base, changes=['CMD ["sh"]'])
    seen = run_cli(
        "run", "--name", "hl", base, "--", "sh", "-c", "echo 8 >> /data/a; cat /data/a /data/b"
    )  # fmt: skip
    assert seen.returncode == 0, seen.stderr
    committed = run_cli("commit", "--progress", "none", "hl", "links:2")
    assert committed.returncode == 0, committed.stderr
    after = sh("links:2", "cat /data/a /data/b")
    assert after.returncode == 0, after.stderr
    assert after.stdout == seen.stdout
    assert seen.stdout.split() == ["78", "7"]


def test_commit_keeps_the_container_config_and_applies_changes(
    image: str, store_home: Path
) -> None:
    done = run_cli("run", "--name", "cfg", "-e", "MODE=prod", "-w", "/srv", image, "--", "true")
    assert done.returncode == 0, done.stderr
    result = run_cli("commit", "--progress", "none", "cfg", "-c", "ENV LEVEL=3")
    assert result.returncode == 0, result.stderr
    config = load_image("cfg:latest").config["config"]
    assert "MODE=prod" in config["Env"] and "LEVEL=3" in config["Env"]
    assert config["WorkingDir"] == "/srv"
    assert config["Cmd"] == ["true"]
    # The working directory docker would create is part of the container's changes.
    assert "srv" in layer_members("cfg:latest")


def test_namespaces_pid1_hostname_and_host_files(image: str, store_home: Path) -> None:
    marker = store_home / "host-only-file"
    marker.write_text("secret")
    script = (
        "echo $$; hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; "
        f"test -e {marker} && echo visible || echo hidden; ls /proc | grep -c '^[0-9]'; "
        "cat /etc/hostname; ls /dev; touch /sys/x 2>/dev/null && echo sys-rw || echo sys-ro"
    )
    done = sh(image, script, "--hostname", "box")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "2"  # the command is PID 2, behind the init
    assert lines[1] == "box"
    assert "layerdiff/_helper.py" in lines[2]
    assert lines[3] == "hidden"
    assert int(lines[4]) <= 4  # only the container's own processes
    assert lines[5] == "box"
    devices = set(lines[6:-1])
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx"} <= devices
    assert lines[-1] == "sys-ro"

    # Namespaces of its own (network shared by default), and no way to gain privileges.
    kinds = ["mnt", "uts", "ipc", "pid", "net"]
    probe = sh(
        image,
        "for n in " + " ".join(kinds) + "; do readlink /proc/self/ns/$n; done; "
        "grep NoNewPrivs /proc/self/status; grep CapBnd /proc/self/status",
    )
    inside = probe.stdout.split("\n")
    host = {k: os.readlink(f"/proc/self/ns/{k}") for k in kinds}
    own = dict(zip(kinds, inside[: len(kinds)], strict=True))
    assert [k for k in kinds if own[k] == host[k]] == ["net"]
    assert inside[len(kinds)].split() == ["NoNewPrivs:", "1"]
    # Docker's default capability set, nothing more (no sys_admin, sys_module, ...).
    assert inside[len(kinds) + 1].split() == ["CapBnd:", "00000000a80425fb"]
    isolated = sh(image, "readlink /proc/self/ns/net", "--network", "none")
    assert isolated.stdout.strip() != host["net"]


def test_exit_codes_pass_through(image: str, store_home: Path) -> None:
    assert sh(image, "exit 0").returncode == 0
    assert sh(image, "exit 42").returncode == 42
    assert sh(image, "kill -9 $$").returncode == 137
    missing = run_cli("run", "--rm", image, "--", "no-such-command")
    assert missing.returncode == 127
    assert missing.stderr.strip() == (
        'layerdiff: error: exec "no-such-command": executable file not found in $PATH'
    )
    not_exec = run_cli("run", "--rm", image, "--", "/etc/passwd")
    assert not_exec.returncode == 126
    assert "/etc/passwd" in not_exec.stderr
    assert runtime.containers() == []  # --rm removed every one of them


def test_docker_habits_of_run(image: str, store_home: Path) -> None:
    """`run -it` from a pipe passes standard input to the command as it is (no terminal is
    made; docker refuses: "the input device is not a TTY"); `-d` is refused with the way to
    run in the background, before anything is made."""
    done = subprocess.run(
        [sys.executable, "-m", "layerdiff", "run", "--rm", "-it", image, "--", "cat"],
        input="typed\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "typed\n"), done.stderr
    refused = run_cli("run", "-d", "--name", "bg", image, "--", "true")
    assert refused.returncode == 125 and "-d/--detach is not supported" in refused.stderr
    assert runtime.containers() == []


def test_a_working_directory_through_a_dangling_link_is_made_where_it_leads(
    store_home: Path,
) -> None:
    """As runc does: ``-w /lnk/new`` with ``/lnk -> /data/real`` (not there yet) in the image
    makes ``/data/real/new`` in the container and runs there."""
    root = busybox_rootfs(store_home / "rootfs-lnk")
    os.symlink("/data/real", root / "lnk")
    layerdiff.commit(root, image="lnk:1")
    done = run_cli("run", "--name", "w", "-w", "/lnk/new", "lnk:1", "--", "sh", "-c", "pwd -P")
    assert (done.returncode, done.stdout) == (0, "/data/real/new\n"), done.stderr
    assert (runtime.open_container("w").upper / "data" / "real" / "new").is_dir()


def test_an_images_volumes_are_the_containers_own_and_stay_out_of_its_commit(
    store_home: Path,
) -> None:
    """``VOLUME``: as docker's anonymous volumes, each a directory of the container's own,
    mounted at its path (made when the image has none), first given what the image holds
    there with its owner and mode, xattrs and hardlinks; what is written there lasts from run
    to run, never goes into upper/ (so not into a commit or diff), and goes with the
    container."""
    root = busybox_rootfs(store_home / "rootfs-vol")
    (root / "data").mkdir()
    (root / "data" / "seed").write_text("seeded\n")
    os.link(root / "data" / "seed", root / "data" / "also")
    os.setxattr(root / "data" / "seed", "trusted.k", b"v")
    os.chown(root / "data", 123, 456)
    (root / "data").chmod(0o700)
    layerdiff.commit(root, image="vol:1", changes=["VOLUME /data", "VOLUME /new/vol"])
    script = (
        "cat /data/seed; stat -c '%u:%g %a' /data; cat /data/x 2>/dev/null; "
        "echo x >> /data/x; echo y > /new/vol/y"
    )
    made = run_cli("create", "--name", "v", "vol:1", "sh", "-c", script)
    assert made.returncode == 0, made.stderr
    first = run_cli("start", "v")
    assert (first.returncode, first.stdout) == (0, "seeded\n123:456 700\n"), first.stderr
    again = run_cli("start", "v")
    assert (again.returncode, again.stdout) == (0, "seeded\n123:456 700\nx\n"), again.stderr
    container = runtime.open_container("v")
    filled = container.path / "volumes" / "0"
    assert (filled / "seed").stat().st_ino == (filled / "also").stat().st_ino  # one file
    assert os.getxattr(filled / "seed", "trusted.k") == b"v"
    assert sorted(
        p.relative_to(container.upper).as_posix() for p in container.upper.rglob("*")
    ) == [
        "new",
        "new/vol",
    ]
    committed = run_cli("commit", "--progress", "none", "v", "vol:2")
    assert committed.returncode == 0, committed.stderr
    assert set(layer_members("vol:2")) == {"new", "new/vol"}
    assert run_cli("rm", "v").returncode == 0
    assert not container.path.exists()


def test_volumes_nested_spelled_twice_through_links_or_emptied(store_home: Path) -> None:
    """A parent volume is mounted before the one inside it however the image spells them, one
    path is one volume, a link on the way is followed inside the root (``/var/run -> ../run``),
    a volume emptied by a run stays empty (filled once, when new), and one under the runtime's
    own mounts is refused."""
    root = busybox_rootfs(store_home / "rootfs-vols")
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "seed").write_text("seed\n")
    (root / "run").mkdir()
    (root / "var").mkdir(exist_ok=True)
    os.symlink("../run", root / "var" / "run")
    volumes = 'VOLUME ["//data/sub", "/data", "/data/.", "/var/run/x"]'
    layerdiff.commit(root, image="vols:1", changes=[volumes])
    script = "ls /data; rm -f /data/seed; echo w > /data/sub/w; echo r > /run/x/r"
    assert run_cli("create", "--name", "vs", "vols:1", "sh", "-c", script).returncode == 0
    first = run_cli("start", "vs")
    assert (first.returncode, first.stdout) == (0, "seed\nsub\n"), first.stderr
    again = run_cli("start", "vs")
    assert (again.returncode, again.stdout) == (0, "sub\n"), again.stderr
    c = runtime.open_container("vs")
    assert c.data["volumes"] == ["/data", "/data/sub", "/var/run/x"]
    assert (c.path / "volumes" / "1" / "w").read_text() == "w\n"
    assert (c.path / "volumes" / "2" / "r").read_text() == "r\n"
    assert not (c.path / "volumes" / "0" / "sub" / "w").exists()
    layerdiff.commit(root, image="shm:1", changes=["VOLUME /dev/shm"])
    refused = run_cli("create", "shm:1")
    assert refused.returncode == 125 and "under /dev, which the runtime mounts" in refused.stderr


def test_image_cmd_env_user_and_workdir(image: str, store_home: Path) -> None:
    layerdiff.commit(
        busybox_rootfs(store_home / "rootfs2"),
        image="svc:1",
        changes=[
            "ENV GREETING=hi",
            "WORKDIR /work",
            "USER nobody",
            'ENTRYPOINT ["sh", "-c"]',
            'CMD ["echo $GREETING $(id -u) $(pwd) $HOME"]',
        ],
    )
    done = run_cli("run", "--rm", "svc:1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hi", "65534", "/work", "/nonexistent"]
    as_root = run_cli(
        "run",
        "--rm",
        "--user",
        "0:0",
        "-e",
        "GREETING=yo",
        "svc:1",
        "--",
        "echo $GREETING $(id -u)",
    )
    assert as_root.stdout.split() == ["yo", "0"]
    bad_user = run_cli("run", "--rm", "--user", "nosuchuser", "svc:1")
    assert bad_user.returncode == 125
    assert "unable to find user nosuchuser" in bad_user.stderr
    # --entrypoint "" clears the image's, so the command runs by itself, as with docker.
    cleared = run_cli("run", "--rm", "--entrypoint", "", "svc:1", "--", "echo", "alone")
    assert cleared.returncode == 0 and cleared.stdout == "alone\n", cleared.stderr
    other = run_cli("run", "--rm", "--entrypoint", "echo", "svc:1", "--", "via", "echo")
    assert other.stdout == "via echo\n", other.stderr


def test_memory_limit_stops_a_process_that_allocates_past_it(image: str, store_home: Path) -> None:
    grow = "x=$(head -c 80000000 /dev/zero | tr '\\0' a); echo ${#x}"
    limited = sh(image, grow, "--memory", "32m")
    assert limited.returncode == 137, (limited.stdout, limited.stderr)
    free = sh(image, grow)
    assert free.returncode == 0 and free.stdout.strip() == "80000000"


def test_pids_limit_and_cpu_quota_apply_to_every_process(image: str, store_home: Path) -> None:
    forks = sh(image, "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait", "--pids-limit", "4")
    assert "can't fork: Resource temporarily unavailable" in forks.stderr
    assert sh(image, "for i in 1 2 3 4 5 6 7 8; do sleep 0.1 & done; wait").returncode == 0

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "layerdiff",
            "run",
            "--name",
            "lim",
            "--cpus",
            "0.5",
            image,
            "--",
            "sh",
            "-c",
            "sleep 30 & sleep 30 & wait",
        ],
    )
    try:
        deadline = time.monotonic() + 20
        names: list[str] = []
        while True:
            c = (
                runtime.open_container("lim")
                if (store_home / "containers/lim/container.json").exists()
                else None
            )
            if c is not None and c.data.get("cgroup"):
                groups = [Path(d) for d in c.data["cgroup"]]
                cpu = next(d for d in groups if "/cpu/" in str(d))
                pids = {int(p) for p in (cpu / "cgroup.procs").read_text().split()}
                # sh and two sleeps: a forked shell shows as "sh" until it has exec'd sleep,
                # so wait for the names, not only the count.
                names = sorted(Path(f"/proc/{p}/comm").read_text().strip() for p in pids)
                if names.count("sleep") == 2:
                    break
            assert time.monotonic() < deadline, f"container did not start: {names}"
            time.sleep(0.05)
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
        # Every process of the command, and nothing else, is in the group: not our CLI, nor
        # the runtime's helper and the container's init (a memory limit's OOM killer would
        # pick them, the largest, and end the container; a process limit would count them).
        assert proc.pid not in pids
        assert names == ["sh", "sleep", "sleep"], names
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 143
    assert all(not d.exists() for d in groups)  # the group is removed after exit


def test_the_oom_killer_ends_a_process_of_the_command_not_the_container(
    image: str, store_home: Path
) -> None:
    """Under a memory limit, the kernel kills the largest process of the group: one of the
    command's workers, never the runtime's helper or init, whose death would end it all."""
    script = (
        'for i in $(seq 1 14); do sh -c "x=\\$(head -c 2000000 /dev/zero | tr \\"\\\\0\\" a);'
        ' sleep 4" & done; wait; echo survived'
    )
    done = sh(image, script, "--memory", "32m")
    assert (done.returncode, done.stdout) == (0, "survived\n"), done.stderr


def test_a_pids_limit_counts_the_commands_processes(image: str, store_home: Path) -> None:
    done = sh(image, "sleep 0.2 & sleep 0.2 & wait; echo ok", "--pids-limit", "3")
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


def _as_nobody(path: Path) -> str:
    """What another user of the host gets running ``path``: its output, or the error."""
    try:
        done = subprocess.run(
            [str(path), "echo", "ran"],
            capture_output=True, text=True, check=False, user=65534, group=65534, extra_groups=[],
        )  # fmt: skip
    except OSError as e:
        return str(e)
    return done.stdout or done.stderr


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory under /tmp that every user may enter (a test's own tmp_path is not)."""
    path = Path(tempfile.mkdtemp(prefix="layerdiff-open-"))
    path.chmod(0o755)
    yield path
    layercache.remove_tree(path)


def test_other_users_cannot_run_setuid_files_of_containers_or_layers(
    image: str, open_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A setuid file a container made, or an image holds, stays out of other users' reach on
    the host, as docker's directories keep it: the container's directory (a path given as its
    name too) and the layer cache are their owner's alone, also when an earlier version left
    them open."""
    monkeypatch.setenv("LAYERDIFF_HOME", str(open_dir / "home"))
    (open_dir / "home").mkdir(mode=0o755)
    container = open_dir / "c"
    script = "mkdir /s && cp /bin/busybox /s/busybox && chmod 4755 /s/busybox"
    made = run_cli("run", "--name", str(container), image, "--", "sh", "-c", script)
    assert made.returncode == 0, made.stderr
    upper_suid = container / "upper" / "s" / "busybox"
    cached = next(layercache.cache_root().glob("trusted/*/diff/bin/busybox"))
    cached.chmod(0o4755)  # an image's own setuid file
    assert upper_suid.stat().st_mode & 0o4000
    for where in (upper_suid, cached):
        assert "Permission denied" in _as_nobody(where), where
    # Open, as an earlier version made them: the next start closes them.
    container.chmod(0o755)
    layercache.cache_root().chmod(0o755)
    assert _as_nobody(upper_suid) == "ran\n"
    assert run_cli("start", str(container)).returncode == 1  # mkdir: /s exists
    for where in (upper_suid, cached):
        assert "Permission denied" in _as_nobody(where), where
    assert run_cli("rm", str(container)).returncode == 0


def test_ctrl_c_stops_the_container(image: str, store_home: Path) -> None:
    # A terminal's Ctrl-C signals the whole foreground process group: do the same.
    proc = subprocess.Popen(
        [sys.executable, "-m", "layerdiff", "run", "--name", "int", image, "--", "sleep", "60"],
        start_new_session=True,
    )
    wait_running("int")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=20) == 130
    c = runtime.open_container("int")
    assert c.state == "exited" and c.data["exit_code"] == 130
    assert mounts_mentioning(c.path) == []


def wait_running(name: str, timeout: float = 20) -> runtime.Container:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = runtime.open_container(name)
        except ContainerNotFoundError:
            c = None
        if c is not None and c.state == "running":
            time.sleep(0.3)  # let the helper reach the command
            return c
        time.sleep(0.05)
    raise AssertionError(f"container {name} did not start")


def test_killed_run_leaves_no_mounts_and_rm_cleans_up(image: str, store_home: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "layerdiff",
            "run",
            "--name",
            "k",
            "--memory",
            "64m",
            image,
            "--",
            "sleep",
            "60",
        ],
    )
    c = wait_running("k")
    groups = [Path(d) for d in c.data["cgroup"]]
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while runtime.open_container("k").state == "running":
        assert time.monotonic() < deadline, "helper outlived its caller"
        time.sleep(0.05)
    assert mounts_mentioning(c.path) == []
    assert all(d.exists() for d in groups)  # nobody removed the group yet
    # The container died with its supervisor: nothing of it runs on, unwatched.
    while any((d / "cgroup.procs").read_text().strip() for d in groups):
        assert time.monotonic() < deadline, "the container outlived its supervisor"
        time.sleep(0.05)
    done = run_cli("rm", "k")
    assert done.returncode == 0, done.stderr
    assert not c.path.exists()
    assert all(not d.exists() for d in groups)


def test_rm_refuses_a_running_container_without_force(image: str, store_home: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "layerdiff", "run", "--name", "busy", image, "--", "sleep", "60"]
    )
    try:
        wait_running("busy")
        refused = run_cli("rm", "busy")
        assert refused.returncode == 1
        assert "is running" in refused.stderr
        forced = run_cli("rm", "-f", "busy")
        assert forced.returncode == 0, forced.stderr
        assert proc.wait(timeout=20) == 137
    finally:
        proc.kill()
    assert run_cli("ps", "-q").stdout == ""


def test_commit_pauses_a_running_container(image: str, store_home: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "layerdiff",
            "run",
            "--name",
            "live",
            image,
            "--",
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i > /root/count; done",
        ],
    )
    try:
        c = wait_running("live")
        freezer = next(Path(d) for d in c.data["cgroup"] if "/freezer/" in d)
        seen: list[str] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.append((freezer / "freezer.state").read_text().strip())
                time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            layerdiff.runtime.commit_container("live", "live:1")
        finally:
            stop.set()
            watcher.join()
        assert "FROZEN" in seen
        assert (freezer / "freezer.state").read_text().strip() == "THAWED"
        count = layer_members("live:1")["root/count"]
        assert count.isfile()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_pause_unpause_and_a_container_left_frozen_still_stops(
    image: str, store_home: Path
) -> None:
    """`pause` freezes the container and `ps` says so; `unpause` thaws it. One left frozen (by
    a `commit --pause` killed before it thawed it) still ends on the SIGTERM `run` passes on."""
    script = "while true; do echo x >> /root/log; done"
    proc = subprocess.Popen(
        [sys.executable, "-m", "layerdiff", "run", "--name", "frz", image, "--", "sh", "-c", script]
    )
    try:
        c = wait_running("frz")
        log = c.upper / "root" / "log"

        def advancing(within: float = 0.3) -> bool:
            """Whether the log grows within ``within`` seconds (a loaded machine may take a
            while to run a thawed container again)."""
            size = log.stat().st_size if log.exists() else 0
            deadline = time.monotonic() + within
            while True:
                time.sleep(0.1)
                if (log.stat().st_size if log.exists() else 0) > size:
                    return True
                if time.monotonic() > deadline:
                    return False

        assert advancing(10)
        done = run_cli("pause", "frz")
        assert done.returncode == 0 and done.stdout == "frz\n", done.stderr
        assert json.loads(run_cli("ps", "--json").stdout)[0]["state"] == "paused"
        assert not advancing()
        again = run_cli("pause", "frz")
        assert again.returncode == 1 and "paused already" in again.stderr
        assert run_cli("unpause", "frz").returncode == 0
        assert json.loads(run_cli("ps", "--json").stdout)[0]["state"] == "running"
        assert advancing(10)

        # Frozen behind run's back, as a killed commit leaves it.
        layerdiff.runtime.pause("frz")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 143
    finally:
        proc.kill()
        proc.wait()
    refused = run_cli("unpause", "frz")
    assert refused.returncode == 1 and "it is exited" in refused.stderr


def test_a_run_killed_while_paused_leaves_nothing_frozen_for_the_next_start(
    image: str, store_home: Path
) -> None:
    """Frozen processes never take the SIGKILL their supervisor's death sends: the container
    stays paused (not exited) until the next start thaws and ends them rather than take their
    control group over, frozen, and hang."""
    script = "test -e /again && exit 3; touch /again; sleep 60"
    made = run_cli("create", "--name", "pk", image, "--", "sh", "-c", script)
    assert made.returncode == 0, made.stderr
    proc = subprocess.Popen([sys.executable, "-m", "layerdiff", "start", "pk"])
    try:
        c = wait_running("pk")
        procs = [Path(d) / "cgroup.procs" for d in c.data["cgroup"]]
        old = {int(p) for f in procs for p in f.read_text().split()}
        assert old
        assert run_cli("pause", "pk").returncode == 0
        proc.kill()
        proc.wait()
    finally:
        proc.kill()
    # Its processes are still there, frozen: paused, as ps says, and rm wants -f for them.
    assert runtime.open_container("pk").state == "paused"
    refused = run_cli("rm", "pk")
    assert refused.returncode == 1 and "container pk is paused (use --force)" in refused.stderr
    again = subprocess.run(
        [sys.executable, "-m", "layerdiff", "start", "pk"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert again.returncode == 3, again.stderr
    for pid in old:
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text(), pid


def test_ps_tells_a_run_by_a_lock_it_may_only_read(image: str, store_home: Path) -> None:
    """`ps` of a store another user runs containers in, or a read-only one, opens the
    container's lock for reading: an immutable lock file stands for one it may not write."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "layerdiff", "run", "--name", "ro", image, "--", "sleep", "30"]
    )
    lock = store_home / "containers" / "ro" / ".run.lock"
    try:
        wait_running("ro")
        subprocess.run(["chattr", "+i", str(lock)], check=True)
        try:
            listed = run_cli("ps", "--json")
            assert listed.returncode == 0, listed.stderr
            assert [c["state"] for c in json.loads(listed.stdout)] == ["running"]
        finally:
            subprocess.run(["chattr", "-i", str(lock)], check=True)
    finally:
        proc.kill()
        proc.wait()


def test_a_stale_pid_of_another_container_is_not_taken_for_a_run(
    image: str, store_home: Path
) -> None:
    """A container whose run was killed keeps "running" and a pid in its state; another
    container's run may have that pid since. Only a run holding the container's lock counts:
    `ps` shows it exited, `start` runs it, and `rm -f` does not kill the other container."""
    other = subprocess.Popen(
        [sys.executable, "-m", "layerdiff", "run", "--name", "b", image, "--", "sleep", "60"]
    )
    try:
        b = wait_running("b")
        assert run_cli("create", "--name", "a", image, "--", "true").returncode == 0
        a = runtime.open_container("a")
        a.data.update(state="running", pid=b.data["pid"])
        a.save()
        states = {c["name"]: c["state"] for c in json.loads(run_cli("ps", "--json").stdout)}
        assert states == {"a": "exited", "b": "running"}
        started = run_cli("start", "a")
        assert started.returncode == 0, started.stderr
        a = runtime.open_container("a")
        a.data.update(state="running", pid=b.data["pid"])
        a.save()
        assert run_cli("rm", "-f", "a").returncode == 0
        time.sleep(0.2)
        assert other.poll() is None
        assert runtime.open_container("b").state == "running"
    finally:
        other.kill()
        other.wait()


def test_create_start_ps_rm_and_a_container_directory(
    image: str, store_home: Path, tmp_path: Path
) -> None:
    where = tmp_path / "mine"
    created = run_cli("create", "--name", str(where), image, "--", "sh", "-c", "echo hi > /f")
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == str(where)
    assert (where / "container.json").is_file()
    named = run_cli("create", "--name", "web", image)
    assert named.stdout.strip() == "web"
    in_use = run_cli("create", "--name", "web", image)
    assert in_use.returncode == 125 and "in use" in in_use.stderr

    ps = json.loads(run_cli("ps", "-a", "--json").stdout)
    assert [(c["name"], c["state"]) for c in ps] == [(str(where), "created"), ("web", "created")]

    started = run_cli("start", str(where))
    assert started.returncode == 0, started.stderr
    assert (where / "upper" / "f").read_text() == "hi\n"
    committed = run_cli("commit", "--progress", "none", str(where), "mine:1")
    assert committed.returncode == 0, committed.stderr
    assert set(layer_members("mine:1")) == {"f"}
    assert run_cli("rm", str(where), "web").returncode == 0
    assert not where.exists() and runtime.containers() == []


def test_a_layer_whose_tar_is_not_its_diff_id_is_refused_and_not_cached(
    image: str, store_home: Path, tmp_path: Path
) -> None:
    """The layer cache is keyed by chain IDs made of the config's diff_ids: a layer whose tar
    hashes to something else would be found again under a name that is not its own."""
    from layerdiff.image import CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, canonical_json

    img = load_image(image)
    config = json.loads(json.dumps(img.config))
    real = config["rootfs"]["diff_ids"][0]
    claimed = "sha256:" + "ab" * 32
    config["rootfs"]["diff_ids"] = [claimed]
    layout = Layout.create(tmp_path / "lying")
    for desc in img.layers:
        layout.put_blob(img.layout.blob_path(desc["digest"]).read_bytes(), media_type="x")
    manifest = dict(img.manifest)
    manifest["config"] = layout.put_blob(canonical_json(config), media_type=CONFIG_MEDIA_TYPE)
    layout.set_tag("1", layout.put_blob(canonical_json(manifest), media_type=MANIFEST_MEDIA_TYPE))

    done = run_cli("run", "--rm", f"oci:{tmp_path / 'lying'}:1", "--", "true")
    assert done.returncode == 125, done.stderr
    assert "uncompressed (config diff_id): digest mismatch" in done.stderr, done.stderr
    assert f"expected {claimed}, found {real}" in done.stderr
    assert layercache.cached() == []
    assert run_cli("run", "--rm", image, "--", "true").returncode == 0
    assert len(layercache.cached()) == 1


def test_rmi_keeps_the_last_name_of_an_image_a_container_uses_unless_forced(
    image: str, store_home: Path
) -> None:
    assert run_cli("tag", image, "bb:1").returncode == 0
    assert run_cli("tag", "bb:1", "bb:2").returncode == 0
    assert run_cli("create", "--name", "c", "bb:1", "--", "true").returncode == 0
    assert run_cli("rmi", "bb:1").returncode == 0  # bb:2 still names it
    for names in (["bb:2"], ["bb:2", "bb:2"]):
        refused = run_cli("rmi", *names)
        assert refused.returncode == 1
        assert "unable to remove bb:2 (must force): container c was made from it" in (
            refused.stderr
        )
    assert [(i.name, i.tag) for i in layerdiff.images()] == [("bb", "2")]
    assert run_cli("tag", "bb:2", "bb:3").returncode == 0
    assert run_cli("rmi", "bb:2", "bb:3").returncode == 1  # both names go: refused
    forced = run_cli("rmi", "-f", "bb:2", "bb:3")
    assert forced.returncode == 0, forced.stderr
    assert layerdiff.images() == []
    started = run_cli("start", "c")  # the container keeps its image's blobs
    assert started.returncode == 0, started.stderr


def test_a_container_given_a_path_keeps_its_image_and_layers_as_one_in_the_store(
    image: str, store_home: Path, tmp_path: Path
) -> None:
    """The store knows of a container made at a directory path: rmi refuses its image's last
    name, gc keeps its image and cached layers, fsck checks them and ps lists it by its path;
    once it is removed (or its directory deleted by hand) they go."""
    assert run_cli("tag", image, "bb:1").returncode == 0
    where = tmp_path / "dev"
    made = run_cli("run", "--name", str(where), "bb:1", "--", "sh", "-c", "echo keep > /work")
    assert made.returncode == 0, made.stderr
    refused = run_cli("rmi", "bb:1")
    assert refused.returncode == 1, refused.stderr
    assert f"container {where} was made from it" in refused.stderr
    assert run_cli("rmi", "-f", "bb:1").returncode == 0
    assert layerdiff.gc().layers == 0
    committed = run_cli("commit", "--progress", "none", str(where), "dev:2")
    assert committed.returncode == 0, committed.stderr
    assert run_cli("run", "--rm", "dev:2", "--", "cat", "/work").stdout == "keep\n"
    listed = run_cli("ps")
    assert str(where) in listed.stdout, listed.stdout
    layer = runtime.open_container(str(where)).layer_dirs()[0]
    layercache.remove_tree(layer.parent)
    checked = run_cli("fsck")
    assert checked.returncode == 1
    assert f"container {where}: cached layer missing: {layer}" in checked.stdout
    # Deleted by hand: gc forgets it, and what only it used goes.
    layercache.remove_tree(where)
    assert layerdiff.gc().temporary == 1 and str(where) not in run_cli("ps").stdout
    assert layerdiff.fsck().ok
    again = tmp_path / "again"
    assert run_cli("create", "--name", str(again), "dev:2").returncode == 0
    assert run_cli("rm", str(again)).returncode == 0
    assert not list((runtime.containers_root() / ".elsewhere").iterdir())


def test_commit_of_a_container_whose_name_makes_no_image_name_asks_for_one(
    image: str, store_home: Path
) -> None:
    assert run_cli("create", "--name", "a..b", image, "--", "true").returncode == 0
    refused = run_cli("commit", "a..b")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "'a..b:latest'" in refused.stderr and "give the image to commit to" in refused.stderr
    done = run_cli("commit", "--progress", "none", "a..b", "ab:1")
    assert done.returncode == 0, done.stderr
    assert layerdiff.images()[0].name == "ab"


def test_a_container_of_an_image_given_by_a_relative_path_is_used_from_anywhere(
    image: str, store_home: Path, tmp_path: Path
) -> None:
    layout = Path(image.removeprefix("oci:").rsplit(":", 1)[0])
    shutil.copytree(layout, tmp_path / "lay")

    def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "layerdiff", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    made = cli(tmp_path, "create", "--name", "rel", "oci:lay:1", "--", "sh", "-c", "echo x > /x")
    assert made.returncode == 0, made.stderr
    assert cli(Path("/"), "start", "rel").returncode == 0
    done = cli(Path("/"), "commit", "--progress", "none", "rel", "rel:1")
    assert done.returncode == 0, done.stderr
    assert "x" in layer_members("rel:1")


def test_an_overridden_variable_keeps_its_place(image: str, store_home: Path) -> None:
    """As docker: `-e` replaces an image's variable where it stands, and adds new ones last."""
    base = layerdiff.inspect(image)["config"]["config"].get("Env") or []
    layerdiff.commit(
        Path(image.removeprefix("oci:").rsplit(":", 1)[0]).parent / "rootfs",
        image="envs:1",
        changes=["ENV FIRST=1 SECOND=2"],
    )
    made = run_cli("create", "--name", "envo", "-e", "FIRST=9", "-e", "NEW=3", "envs:1")
    assert made.returncode == 0, made.stderr
    assert runtime.open_container("envo").config["Env"] == [*base, "FIRST=9", "SECOND=2", "NEW=3"]


def test_diff_of_a_container_lists_what_it_changed(image: str, store_home: Path) -> None:
    """As docker diff CONTAINER: added, changed and deleted paths, and not the files the
    runtime writes for it (hosts, hostname, resolv.conf)."""
    script = "echo new > /f; echo x >> /etc/passwd; rm /bin/vi; mkdir -p /d/e; echo h > /etc/hosts"
    done = run_cli("run", "--name", "df", image, "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    listed = run_cli("diff", "df")
    assert listed.returncode == 0, listed.stderr
    lines = set(listed.stdout.splitlines())
    assert {"A /f", "C /etc/passwd", "D /bin/vi", "A /d", "A /d/e"} <= lines, lines
    assert not any(line.endswith("/etc/hosts") for line in lines)
    missing = run_cli("diff", "no-such-container")
    assert missing.returncode == 2 and "no such container: no-such-container" in missing.stderr


def test_a_container_is_found_by_its_id_and_by_name_whatever_the_current_directory(
    image: str, store_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As docker: the ID `ps` shows, or any unique prefix of it, names the container in every
    container command; and a directory of the container's name where the command runs does not
    hide it (`cd / && layerdiff diff dev`)."""
    assert run_cli("run", "--name", "dev", image, "--", "sh", "-c", "echo x > /f").returncode == 0
    cid = runtime.open_container("dev").id
    listed = run_cli("ps")
    [row] = [line.split() for line in listed.stdout.splitlines() if line.endswith(" dev")]
    assert row[:2] == [cid[:12], image], listed.stdout
    assert run_cli("ps", "-q").stdout.split() == [cid[:12]]  # IDs, as docker ps -q
    for prefix in (cid[:12], cid, cid[:5]):
        changed = run_cli("diff", prefix)
        assert changed.returncode == 0 and "A /f" in changed.stdout.splitlines(), changed
    (tmp_path / "dev").mkdir()
    monkeypatch.chdir(tmp_path)
    by_name = run_cli("diff", "dev")
    assert by_name.returncode == 0 and "A /f" in by_name.stdout.splitlines(), by_name
    assert run_cli("commit", cid[:12], "fromid:1").returncode == 0
    # A name wins, as with docker: a store directory of that name (a create killed, or still
    # running) is that container, never the one whose ID starts so.
    (store_home / "containers" / cid[:2]).mkdir()
    for args in (["rm", cid[:2]], ["diff", cid[:2]]):
        refused = run_cli(*args)
        assert refused.returncode != 0 and "no such container" in refused.stderr, refused
    assert run_cli("rm", "-f", cid[:2]).returncode == 0  # what was left of that create
    assert runtime.open_container("dev").id == cid
    assert run_cli("rm", cid[:12]).returncode == 0
    assert not (store_home / "containers" / "dev").exists()
    gone = run_cli("start", cid[:12])
    assert gone.returncode == 125 and "no such container" in gone.stderr, gone
    # Once the image's name has moved to another image, ps shows the image's ID, as docker.
    assert run_cli("tag", image, "mv:1").returncode == 0
    assert run_cli("create", "--name", "mv", "mv:1").returncode == 0
    made_from = layerdiff.inspect("mv:1")["digest"]
    (tmp_path / "t").mkdir()
    layerdiff.commit(tmp_path / "t", image="mv:1")
    listed = run_cli("ps")
    [row] = [line.split() for line in listed.stdout.splitlines() if line.endswith(" mv")]
    assert row[1] == made_from.removeprefix("sha256:")[:12], listed.stdout


def test_rm_refuses_a_container_being_started(image: str, store_home: Path) -> None:
    """Between the lock a start takes and the state it records, the container is starting:
    rm must not take its directory from under it."""
    assert run_cli("create", "--name", "st", image, "--", "true").returncode == 0
    lock = os.open(store_home / "containers" / "st" / ".run.lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as start holds it
        for args in (["rm", "st"], ["rm", "-f", "st"]):
            refused = run_cli(*args)
            assert refused.returncode == 1 and "is being started" in refused.stderr, refused
        assert (store_home / "containers" / "st" / "container.json").is_file()
    finally:
        os.close(lock)
    assert run_cli("rm", "st").returncode == 0


def test_every_word_after_the_image_is_the_commands(image: str, store_home: Path) -> None:
    """As docker run parses: after IMAGE, words that look like run's own options (-e, -u,
    --rm, --help) are the command's; a '--' there only separates."""
    done = run_cli("run", "--rm", image, "printf", "%s|", "-e", "A=1", "-u", "1000", "--rm", "-h")
    assert (done.returncode, done.stdout) == (0, "-e|A=1|-u|1000|--rm|-h|"), done.stderr
    done = run_cli("run", "--rm", image, "--", "sh", "-c", "echo $0", "--name")
    assert (done.returncode, done.stdout) == (0, "--name\n"), done.stderr
    created = run_cli("create", "--name", "c", image, "ls", "--rm")
    assert created.returncode == 0, created.stderr
    assert runtime.open_container("c").command == ["ls", "--rm"]


def test_the_container_cannot_reach_host_devices_or_kernel_settings(
    image: str, store_home: Path
) -> None:
    """As docker's default spec confines root in a container: only the standard device nodes
    open (a node made with mknod, in the root or in /dev, does not); /proc/sys and
    /proc/sysrq-trigger are read-only; what tells of the host's kernel is hidden."""
    script = """
        mknod /tmp/tty1 c 4 1 && ! head -c 0 /tmp/tty1 && echo char-refused
        mknod /dev/loop0 b 7 0 && ! head -c 0 /dev/loop0 && echo block-refused
        ! echo /tmp/layerdiff-core > /proc/sys/kernel/core_pattern && echo sysctl-refused
        ! echo h > /proc/sysrq-trigger && echo sysrq-refused
        [ "$(cat /proc/timer_list)" = "" ] && [ "$(ls /sys/firmware)" = "" ] && echo masked
        echo x > /dev/null && [ "$(head -c 3 /dev/zero | wc -c)" = 3 ] && echo devices-work
    """
    core_pattern = Path("/proc/sys/kernel/core_pattern").read_text()
    done = run_cli("run", "--rm", image, "sh", "-c", script)
    assert done.stdout.split() == [
        "char-refused", "block-refused", "sysctl-refused", "sysrq-refused", "masked",
        "devices-work",
    ], done.stderr  # fmt: skip
    assert Path("/proc/sys/kernel/core_pattern").read_text() == core_pattern


@pytest.mark.parametrize("user", ["0", "1000"])
def test_the_command_cannot_make_namespaces(image: str, store_home: Path, user: str) -> None:
    """As docker's seccomp profile has it: no user namespace (which would give the command
    every capability in it), nor any other; forks and the rest work."""
    script = "unshare -r true; echo $?; unshare -m true; echo $?; sh -c 'echo forked' & wait"
    done = sh(image, script, "-u", user)
    assert done.stdout.split() == ["1", "1", "forked"], done.stderr
    assert done.stderr.count("Operation not permitted") == 2, done.stderr


_I386_PROGRAM = """
.globl _start
_start:
    mov $4, %eax            # write(1, hello, 6)
    mov $1, %ebx
    mov $hello, %ecx
    mov $6, %edx
    int $0x80
    mov $310, %eax          # unshare(CLONE_NEWUSER)
    mov $0x10000000, %ebx
    int $0x80
    mov %eax, %ebx          # exit(-result): the errno, or 0
    neg %ebx
    mov $1, %eax
    int $0x80
hello:
    .ascii "hello\\n"
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="an i386 program on an x86-64 host")
def test_a_32_bit_program_runs_and_is_filtered_as_a_64_bit_one(
    image: str, store_home: Path, tmp_path: Path
) -> None:
    """docker runs i386 programs in x86-64 containers: the seccomp filter knows their numbers,
    refusing the same calls (here a user namespace), and does not kill them."""
    source = tmp_path / "p.s"
    source.write_text(_I386_PROGRAM)
    tree = tmp_path / "t"
    (tree / "bin").mkdir(parents=True)
    built = subprocess.run(
        f"as --32 -o {tmp_path}/p.o {source} && ld -m elf_i386 -o {tree}/bin/i386 {tmp_path}/p.o",
        shell=True, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if built.returncode != 0:
        pytest.skip(f"cannot build an i386 program here: {built.stderr.strip()}")
    layerdiff.commit(tree, base=image, image="i386:1")
    done = run_cli("run", "--rm", "i386:1", "/bin/i386")
    assert (done.returncode, done.stdout) == (errno.EPERM, "hello\n"), done.stderr


def test_the_commands_umask_is_dockers_whatever_the_callers(image: str, store_home: Path) -> None:
    old = os.umask(0o077)
    try:
        done = run_cli("run", "--rm", image, "sh", "-c", "umask; touch /f; stat -c %a /f")
    finally:
        os.umask(old)
    assert done.stdout.split() == ["0022", "644"], done.stderr


def test_the_images_etc_keeps_its_attributes_in_the_container_and_its_commit(
    image: str, store_home: Path, tmp_path: Path
) -> None:
    """The init layer's /etc (a mount point for /etc/hosts and the like) stands over the
    image's: it takes the image's mode, owner, mtime, xattrs and ACL, so the container sees
    them and a commit of a write below /etc records them, not 0755 root and nothing else."""
    rootfs = busybox_rootfs(tmp_path / "rootfs")
    os.chown(rootfs / "etc", 1000, 1000)
    # An access ACL (user 1234: r-x) and an xattr of its own.
    acl = struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, ident)
        for tag, perm, ident in [
            (0x01, 7, 0xFFFFFFFF), (0x02, 5, 1234), (0x04, 5, 0xFFFFFFFF),
            (0x10, 5, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF),
        ]
    )  # fmt: skip
    os.setxattr(rootfs / "etc", "system.posix_acl_access", acl)
    os.setxattr(rootfs / "etc", "user.k", b"v")
    os.chmod(rootfs / "etc", 0o750)
    os.utime(rootfs / "etc", (1_600_000_000, 1_600_000_000))
    layerdiff.commit(rootfs, image="etc:1")
    done = run_cli("run", "--name", "e", "etc:1", "sh", "-c", "stat -c '%a %u %g %Y' /etc")
    assert done.stdout.split() == ["750", "1000", "1000", "1600000000"], done.stderr
    done = run_cli("run", "--name", "w", "etc:1", "sh", "-c", "echo x > /etc/newconf")
    assert done.returncode == 0, done.stderr
    assert run_cli("commit", "--progress", "none", "w", "etc:2").returncode == 0
    etc = layer_members("etc:2")["etc"]
    assert (etc.mode, etc.uid, etc.gid) == (0o750, 1000, 1000)
    assert layer_members("etc:2")["etc/newconf"].isfile()
    assert etc.pax_headers.get("SCHILY.xattr.user.k") == "v"
    assert "SCHILY.xattr.system.posix_acl_access" in etc.pax_headers


def test_hostname_set_with_e_wins(image: str, store_home: Path) -> None:
    done = sh(image, 'echo "$HOSTNAME"; env | grep -c ^HOSTNAME=', "-e", "HOSTNAME=custom")
    assert done.stdout.split() == ["custom", "1"], done.stderr


def test_run_rm_of_a_container_rm_f_removed_gives_the_commands_exit_code(
    image: str, store_home: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "layerdiff", "run", "--rm", "--name", "gone", image, "--", "sh",
         "-c", "echo ready; exec sleep 100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    assert run_cli("rm", "-f", "gone").returncode == 0
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 137, err
    assert runtime.containers() == []


def test_a_relative_layerdiff_home_runs_containers(image: str, tmp_path: Path) -> None:
    """Made absolute at once: the container's helper changes directory before it mounts the
    store's paths."""
    env = {**os.environ, "LAYERDIFF_HOME": "rel"}
    done = subprocess.run(
        [sys.executable, "-m", "layerdiff", "run", "--rm", image, "sh", "-c", "echo ok"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr
    assert (tmp_path / "rel" / "images" / "index.json").is_file()


def test_an_image_of_many_layers_runs(image: str, store_home: Path, tmp_path: Path) -> None:
    """Docker runs images of up to 127 layers; their overlay options do not fit the one page
    a mount(2) takes, so the layers are given one by one (Linux 6.8's ``lowerdir+``)."""
    current = image
    for i in range(70):
        layer = tmp_path / f"l{i}"
        (layer / "layers").mkdir(parents=True)
        (layer / "layers" / str(i)).write_text(f"{i}\n")
        current = f"many:{i}"
        layerdiff.commit(layer, base=image if i == 0 else f"many:{i - 1}", image=current)
    assert len(layerdiff.inspect(current)["config"]["rootfs"]["diff_ids"]) == 71
    done = sh(current, "ls /layers | wc -l; cat /layers/0 /layers/69")
    assert done.stdout.split() == ["70", "0", "69"], done.stderr

    # Where the kernel lacks fsopen (or a profile refuses it), takes overlayfs's options
    # through the legacy parser (before 6.5, which accepts any key: here every key "succeeds"),
    # or knows no "lowerdir+" (6.5 to 6.7: here every key is refused), one mount(2) takes the
    # layers while they fit, and says why it cannot when they do not.
    def run_under(
        img: str, rules: Sequence[seccomp.Rule], err: int
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "layerdiff", "run", "--rm", img, "sh", "-c", "ls /layers"],
            capture_output=True, text=True, check=False, timeout=120,
            preexec_fn=seccomp.deny(rules, err),
        )  # fmt: skip

    no_fsopen: list[seccomp.Rule] = [430]
    set_string: list[seccomp.Rule] = [(431, 1, 1)]  # fsconfig(FSCONFIG_SET_STRING)
    kernels = [(no_fsopen, errno.ENOSYS), (set_string, 0), (set_string, errno.EINVAL)]
    for rules, err in kernels:
        few = run_under("many:9", rules, err)
        assert (few.returncode, few.stdout.split()) == (0, [str(i) for i in range(10)]), few.stderr
        refused = run_under(current, rules, err)
        assert refused.returncode == 125
        assert "the image has 71 layers: too many for one overlayfs mount" in refused.stderr


def test_a_container_whose_state_is_lost_is_reported_and_rm_f_removes_it(
    image: str, store_home: Path
) -> None:
    """A corrupt container.json, or none (a create killed while it unpacked): fsck names the
    container, rm says what to do, rm -f removes it (not while a create or run holds it), and
    the name is free again."""
    assert run_cli("create", "--name", "c4", image, "true").returncode == 0
    (store_home / "containers/c4/container.json").write_text("{")
    ghost = store_home / "containers/ghost"
    (ghost / "upper").mkdir(parents=True)
    (ghost / ".run.lock").touch()
    report = run_cli("fsck")
    assert report.returncode == 1
    assert "container c4: " in report.stdout and "container ghost: " in report.stdout
    for name in ("c4", "ghost"):
        refused = run_cli("rm", name)
        assert refused.returncode == 1 and "rm -f removes" in refused.stderr, refused.stderr
    with open(ghost / ".run.lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = run_cli("rm", "-f", "ghost")
        assert busy.returncode == 1 and "being created or run" in busy.stderr, busy.stderr
    for name in ("c4", "ghost"):
        removed = run_cli("rm", "-f", name)
        assert removed.returncode == 0, removed.stderr
    assert sorted(os.listdir(store_home / "containers")) == []
    assert run_cli("create", "--name", "c4", image, "true").returncode == 0
    assert run_cli("fsck").returncode == 0
    # State that is JSON but no object is unreadable too; a directory whose name no container
    # could have (given by path, lost+found) is not one of ours, and fsck leaves it be.
    (store_home / "containers/c4/container.json").write_text("[1, 2]")
    assert "not an object" in run_cli("rm", "c4").stderr
    assert run_cli("rm", "-f", "c4").returncode == 0
    assert run_cli("create", "--name", str(store_home / "containers/.hid"), image).returncode == 0
    (store_home / "containers/lost+found").mkdir()
    assert run_cli("fsck").returncode == 0


def test_bad_input_gives_one_line(image: str, store_home: Path) -> None:
    cases = [
        (["run", "--rm", "no-such-image:1", "--", "true"], 125, "image not found"),
        (["run", "--rm", "--name", "bad name", image, "--", "true"], 125, "invalid container name"),
        (["run", "--rm", "--memory", "lots", image], 125, "invalid memory size"),
        # Bad usage of the commands whose exit code is the container's is 125, never 2 (which
        # the command itself may return); elsewhere it stays click's 2.
        (["run", "--bogus", image], 125, "No such option '--bogus'"),
        (["run"], 125, "Missing argument 'IMAGE'"),
        (["create", "--cpus", "x", image], 125, "--cpus"),
        (["create", "no-such-image:1"], 125, "image not found"),
        (["start"], 125, "Missing argument 'CONTAINER'"),
        (["commit", "--bogus"], 2, "No such option '--bogus'"),
        (["run", "--rm", "-w", "rel", image, "--", "true"], 125, "'rel' is not absolute"),
        (["create", "--hostname", "bad host", image], 125, "invalid hostname 'bad host'"),
        (["create", "--hostname", "h" * 65, image], 125, "invalid hostname"),
        (["commit", "ghost", "x:1"], 1, "no such container: ghost"),
        (["rm", "ghost"], 1, "no such container: ghost"),
        (["start", "ghost"], 125, "no such container: ghost"),
    ]
    for args, code, text in cases:
        done = run_cli(*args)
        assert done.returncode == code, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert text in done.stderr, (args, done.stderr)


def test_parallel_runs_share_the_layer_cache(image: str, store_home: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "layerdiff", "run", "--rm", image, "--", "cat", "/etc/group"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6
    assert all("nogroup" in out for out in outs)
    cached = list((layercache.cache_root() / "trusted").iterdir())
    diff_ids = load_image(image).config["rootfs"]["diff_ids"]
    assert sorted(p.name for p in cached if not p.name.startswith(".")) == sorted(
        d.removeprefix("sha256:") for d in diff_ids
    )
    assert not [p for p in cached if p.name.startswith(".tmp-")]
    inode = cached[0].stat().st_ino
    assert sh(image, "true").returncode == 0
    assert cached[0].stat().st_ino == inode  # warm: used, not unpacked again


def test_a_layer_reaching_into_an_earlier_one_runs_as_unpacked(
    store_home: Path, tmp_path: Path
) -> None:
    """A layer made by tar over a merged-/usr base writes lib/b, through the base's /lib link,
    and hard-links a file of the base: `run` shows what `unpack` gives (the layer cache
    applies it over the layers below), not a /lib directory holding b alone."""
    root = busybox_rootfs(tmp_path / "rootfs")
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "a").write_text("a\n")
    (root / "lib").symlink_to("usr/lib")
    base = layerdiff.write_layer(root, dest=tmp_path / "blobs", compression="none")
    top = layer_tar([F("lib/b", b"b\n"), H("bin/sh2", "bin/busybox")])
    load_layers(tmp_path, "reaching:1", [base.path.read_bytes(), top])
    script = (
        "readlink /lib; ls /lib; cat /usr/lib/b; "
        "[ /bin/sh2 -ef /bin/busybox ] && echo linked; stat -c %h /bin/busybox"
    )
    done = sh("reaching:1", script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["usr/lib", "a", "b", "b", "linked", "2"]
    unpacked = tmp_path / "unpacked"
    layerdiff.unpack("reaching:1", unpacked)
    assert os.readlink(unpacked / "lib") == "usr/lib"
    assert sorted(os.listdir(unpacked / "usr/lib")) == ["a", "b"]
    assert os.path.samefile(unpacked / "bin/sh2", unpacked / "bin/busybox")


def test_run_and_create_take_an_image_id(image: str, store_home: Path) -> None:
    """As docker run takes an image ID: the digest `images` shows, for an untagged image
    too."""
    layerdiff.tag(image, "byid:1")
    digest = layerdiff.inspect("byid:1")["digest"]
    store = Layout.open(store_home / "images")
    kept = store.resolve("byid:1")
    store.remove_tag("byid:1")
    store.update_index(lambda ms: [{k: v for k, v in kept.items() if k != "annotations"}, *ms])
    done = sh(digest[7:19], "echo ran")
    assert (done.returncode, done.stdout) == (0, "ran\n"), done.stderr
    runtime.create(digest, name="byid")
    assert runtime.open_container("byid").data["image"] == digest
    runtime.remove("byid")


def test_python_api_run(image: str, store_home: Path) -> None:
    result = runtime.run(image, ["sh", "-c", "exit 3"], name="api")
    assert result.exit_code == 3 and result.error is None
    assert result.container.state == "exited"
    with pytest.raises(ContainerError, match="in use"):
        runtime.create(image, name="api")
    runtime.remove("api")
    with pytest.raises(ContainerNotFoundError):
        runtime.open_container("api")


def test_a_collector_killed_halfway_never_leaves_a_partial_layer(
    image: str, store_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc removing a cached layer and stopped halfway (killed) leaves a temporary directory,
    not a layer missing files that the next run would take as whole."""
    c = runtime.create(image, name="once")
    layer = c.layer_dirs()[0].parent
    runtime.remove("once")
    script = "ls -R / | wc -l"
    whole = sh(image, script).stdout

    def killed_halfway(path: Path) -> None:
        next(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()).unlink()
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(layercache, "remove_tree", killed_halfway)
        m.setattr(Layout, "manifests", lambda self: [])  # nothing keeps the layer
        with pytest.raises(KeyboardInterrupt):
            layerdiff.gc()
    assert not layer.exists()
    again = sh(image, script)
    assert (again.returncode, again.stdout) == (0, whole), again.stderr
    assert layer.is_dir()
    assert layerdiff.gc().temporary == 1
    assert layerdiff.fsck().ok


def test_gc_keeps_what_containers_use_and_removes_the_rest(image: str, store_home: Path) -> None:
    base = busybox_rootfs(store_home / "rootfs-store")
    layerdiff.commit(base, image="base:1", changes=['CMD ["sh"]'])
    runtime.create("base:1", name="keeper")
    runtime.create(image, name="other")
    cache = layercache.cache_root() / "trusted"
    stale = cache / ".tmp-deadbeef.1234"
    (stale / "diff").mkdir(parents=True)
    # The tag goes away but the container still needs its image: gc keeps its blobs.
    store = Layout.open(store_home / "images")
    store.remove_tag("1")
    report = layerdiff.gc()
    assert report.layers == 0 and report.temporary >= 1 and not stale.exists()
    committed = runtime.commit_container("keeper", "kept:1")
    assert load_image(committed.image).layers

    # Once the container using the layout image is gone, its cached layer goes too; the layer
    # of the store's images stays.
    runtime.remove("other")
    runtime.remove("keeper")
    report = layerdiff.gc()
    left = sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))
    kept = layercache.chain_ids(load_image("kept:1").config["rootfs"]["diff_ids"])
    assert left == sorted({d.removeprefix("sha256:") for d in kept} & set(left))
    assert report.layers >= 1
    assert layerdiff.fsck().ok


def test_fsck_checks_the_layer_cache_and_containers(image: str, store_home: Path) -> None:
    c = runtime.create(image, name="checked")
    assert layerdiff.fsck().ok
    layer = c.layer_dirs()[0].parent
    (layer / "layer.json").write_text('{"diff_id": "sha256:' + "0" * 64 + '"}')
    report = layerdiff.fsck()
    wrong = f"holds layer sha256:{'0' * 64}, not {layer.name}"
    assert [p.what for p in report.problems] == [wrong]
    layercache.remove_tree(layer)
    done = run_cli("fsck")
    assert done.returncode == 1
    assert f"container checked: cached layer missing: {layer}/diff" in done.stdout
    refused = run_cli("start", "checked")
    assert refused.returncode == 125 and "cached layer missing" in refused.stderr


def test_run_refuses_a_layer_whose_digest_does_not_match(image: str, store_home: Path) -> None:
    base = busybox_rootfs(store_home / "rootfs-bad")
    layerdiff.commit(base, image=f"oci:{store_home / 'bad'}:1", compression="none")
    img = load_image(f"oci:{store_home / 'bad'}:1")
    blob = img.layout.blob_path(img.layers[0]["digest"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit inside some file's contents
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    done = run_cli("run", "--rm", f"oci:{store_home / 'bad'}:1", "--", "true")
    assert done.returncode == 125
    assert "digest mismatch" in done.stderr or "does not match" in done.stderr, done.stderr
    cache = layercache.cache_root() / "trusted"
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    assert runtime.containers() == []


@pytest.mark.parametrize(
    "sig", [signal.SIGUSR1, signal.SIGQUIT, signal.SIGWINCH, signal.SIGINT, signal.SIGALRM]
)
def test_signals_to_run_reach_the_container(image: str, store_home: Path, sig: int) -> None:
    """As docker's sig-proxy: the signal reaches the command, and run returns its exit code.
    SIGINT too, when a process sends it to run alone (``kill -INT``)."""
    name = signal.Signals(sig).name.removeprefix("SIG")
    proc = subprocess.Popen(
        [sys.executable, "-m", "layerdiff", "run", "--rm", "--name", "s", image, "--", "sh", "-c",
         f'trap "exit 9" {name}; echo ready; while true; do sleep 0.1; done'],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 9


class _Terminal:
    """A command in a session of its own, with a pty as its controlling terminal."""

    def __init__(self, command: list[str], rows: int = 24, cols: int = 80) -> None:
        self.pid, self.master = pty.fork()
        if self.pid == 0:
            try:
                os.execv(command[0], command)
            finally:
                os._exit(127)
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.seen = b""

    def wait_for(self, text: bytes) -> None:
        """Read the terminal until ``text`` was written to it."""
        deadline = time.monotonic() + 30
        while text not in self.seen:
            assert time.monotonic() < deadline, self.seen
            if select.select([self.master], [], [], 1)[0]:
                self.seen += os.read(self.master, 1024)

    def drain(self) -> None:
        """Read what the terminal has now, waiting at most a tenth of a second for it."""
        with contextlib.suppress(OSError):
            while select.select([self.master], [], [], 0.1)[0]:
                self.seen += os.read(self.master, 1024)

    def exit_code(self, timeout: float = 30, *, close: bool = True) -> int:
        """The command's exit code; it is killed, and the test fails, if it takes longer.
        The terminal is closed then, unless ``close`` is false."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise AssertionError(f"still running after {timeout} s: {self.seen!r}")
            try:  # reading keeps a chatty command from blocking on a full terminal
                if select.select([self.master], [], [], 0.1)[0]:
                    self.seen += os.read(self.master, 1024)
            except OSError:  # closed: hung up on purpose, or the command is gone
                time.sleep(0.1)
        if close:
            with contextlib.suppress(OSError):
                os.close(self.master)
        return os.waitstatus_to_exitcode(status)


def test_ctrl_c_on_a_terminal_reaches_the_command_and_run_waits_for_it(
    image: str, store_home: Path
) -> None:
    """A real terminal's Ctrl-C (``SI_KERNEL``, to the whole foreground process group) reaches
    the command, whose trap decides; run neither dies of it nor ends the container, and returns
    the command's exit code. (Whether the command saw it once or twice cannot be told reliably
    from here: a second SIGINT pending before the trap runs merges with the first.)"""
    script = (
        "n=0; trap 'n=$((n+1))' INT; echo ready; i=0; "
        "while [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done; exit $n"
    )
    command = [sys.executable, "-m", "layerdiff", "run", "--rm", image, "--", "sh", "-c", script]
    terminal = _Terminal(command)
    terminal.wait_for(b"ready")
    os.write(terminal.master, b"\x03")  # Ctrl-C, as typed
    assert terminal.exit_code() == 1


_PUSH_INPUT = r"""
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <sys/ioctl.h>
int main(void) {
    const char *typed = "touch /tmp/pushed\n";
    for (const char *c = typed; *c; c++)
        if (ioctl(0, TIOCSTI, c) != 0) {
            printf("refused: %s\n", strerror(errno));
            return 1;
        }
    printf("pushed\n");
    return 0;
}
"""


def test_the_command_cannot_push_input_into_the_callers_terminal(
    store_home: Path, tmp_path: Path
) -> None:
    """On the caller's terminal (its streams, and its controlling terminal, as job control
    needs), the command may not push input into it (``TIOCSTI``): the caller's shell would
    read it as typed, and run it as the caller, outside the container."""
    if shutil.which("cc") is None:
        pytest.skip("needs a C compiler for the probe")
    root = busybox_rootfs(store_home / "rootfs-push")
    (tmp_path / "push.c").write_text(_PUSH_INPUT)
    built = subprocess.run(
        ["cc", "-static", "-O2", "-o", str(root / "bin" / "push"), str(tmp_path / "push.c")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if built.returncode != 0:
        pytest.skip(f"no static C library for the probe: {built.stderr}")
    layerdiff.commit(root, image="push:1")
    terminal = _Terminal([sys.executable, "-m", "layerdiff", "run", "--rm", "push:1", "push"])
    assert terminal.exit_code() == 1
    assert b"refused: Operation not permitted" in terminal.seen, terminal.seen


def test_the_command_cannot_signal_the_callers_process_group(image: str, store_home: Path) -> None:
    """It shares the caller's process group (for job control): ``kill 0`` (a common cleanup
    trap) would signal the caller and its pipeline too, so it is refused (EPERM)."""
    run = shlex.join([sys.executable, "-m", "layerdiff", "run", "--rm", image, "sh", "-c"])
    done = subprocess.run(
        ["sh", "-c", f"{run} 'kill -9 0; echo after $?' </dev/null; echo caller survived"],
        capture_output=True, text=True, check=False, timeout=60, start_new_session=True,
    )  # fmt: skip
    assert done.stdout == "after 1\ncaller survived\n", (done.stdout, done.stderr)


def test_ctrl_z_on_a_terminal_stops_the_command_as_any_job(image: str, store_home: Path) -> None:
    """Without -t the command is in the caller's process group, so a terminal's Ctrl-Z stops it
    with run, as an interactive shell's job control expects, and ``fg`` lets both go on."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash for job control")
    terminal = _Terminal(["/bin/bash", "--norc", "--noprofile", "-i"])
    run = shlex.join([sys.executable, "-m", "layerdiff", "run", "--rm", image, "sh", "-c"])
    os.write(terminal.master, f"{run} 'while true; do echo tick; sleep 0.1; done'\r".encode())
    terminal.wait_for(b"tick\r\ntick\r\n")  # its output, not the command line echoed
    os.write(terminal.master, b"\x1a")  # Ctrl-Z, as typed
    terminal.wait_for(b"Stopped")
    time.sleep(0.5)
    terminal.drain()
    stopped_at = len(terminal.seen)
    time.sleep(1)
    terminal.drain()
    assert terminal.seen[stopped_at:].count(b"tick") == 0, terminal.seen[stopped_at:]
    os.write(terminal.master, b"fg\r")
    deadline = time.monotonic() + 10
    while terminal.seen[stopped_at:].count(b"tick") < 2:
        assert time.monotonic() < deadline, terminal.seen
        terminal.drain()
    prompts = terminal.seen.count(b"# ")
    os.write(terminal.master, b"\x03")  # Ctrl-C ends it, then the shell
    deadline = time.monotonic() + 20
    while terminal.seen.count(b"# ") == prompts:
        assert time.monotonic() < deadline, terminal.seen
        terminal.drain()
    os.write(terminal.master, b"exit 0\r")
    assert terminal.exit_code() == 0


def test_run_t_gives_the_command_a_terminal_of_its_own(image: str, store_home: Path) -> None:
    """``-t``: the command's streams and controlling terminal are a terminal of the
    container's own, of the caller's size, with TERM set; typed keys reach it as keys (Ctrl-C
    is its terminal's SIGINT), and the caller's terminal is as it was afterwards."""
    script = (
        "tty; echo TERM=$TERM; stty size; trap 'echo caught; exit 4' INT; echo ready; "
        "while true; do sleep 0.1; done"
    )
    terminal = _Terminal(
        [sys.executable, "-m", "layerdiff", "run", "--rm", "-t", image, "sh", "-c", script],
        rows=33,
        cols=101,
    )
    before = termios.tcgetattr(terminal.master)
    terminal.wait_for(b"ready")
    os.write(terminal.master, b"\x03")  # Ctrl-C, as typed
    assert terminal.exit_code(close=False) == 4
    assert b"/dev/pts/0\r\nTERM=xterm\r\n33 101\r\n" in terminal.seen, terminal.seen
    assert b"caught" in terminal.seen
    assert termios.tcgetattr(terminal.master) == before  # raw mode undone
    os.close(terminal.master)


def test_run_t_sets_term_for_the_run_only(image: str, store_home: Path) -> None:
    """TERM goes to the command of a run with a terminal, as docker sets it, but not into the
    container's config, so not into an image committed from it."""
    done = run_cli("run", "--name", "tt", "-t", image, "sh", "-c", "echo $TERM")
    assert (done.returncode, done.stdout) == (0, "xterm\n"), (
        done.stderr
    )  # text mode: \r\n read as \n
    committed = run_cli("commit", "--progress", "none", "tt", "tt:1")
    assert committed.returncode == 0, committed.stderr
    env = layerdiff.inspect("tt:1")["config"]["config"]["Env"]
    assert not any(e.startswith("TERM=") for e in env), env


def test_run_t_without_a_terminal_still_gives_the_command_one(image: str, store_home: Path) -> None:
    """As ``docker run -t`` in a pipe: the command has a terminal; its output comes out. A
    container created with ``-t`` has one at each start."""
    done = subprocess.run(
        [sys.executable, "-m", "layerdiff", "run", "--rm", "-t", image, "sh", "-c", "tty; exit 5"],
        stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (5, b"/dev/pts/0\r\n"), done.stderr
    made = run_cli("create", "-t", "--name", "ct", image, "sh", "-c", "tty; exit 6")
    assert made.returncode == 0, made.stderr
    started = subprocess.run(
        [sys.executable, "-m", "layerdiff", "start", "ct"],
        stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    assert (started.returncode, started.stdout) == (6, b"/dev/pts/0\r\n"), started.stderr


def test_ctrl_c_on_a_terminal_ends_a_paused_container_too(image: str, store_home: Path) -> None:
    """The terminal sends Ctrl-C to the container's processes itself; a frozen one takes it
    only once thawed, which run does on seeing it, as it does for a TERM it passes on."""
    script = "echo ready; while true; do sleep 0.1; done"
    command = [
        *[sys.executable, "-m", "layerdiff", "run", "--rm", "--name", "pz", image],
        *["--", "sh", "-c", script],
    ]
    terminal = _Terminal(command)
    terminal.wait_for(b"ready")
    assert run_cli("pause", "pz").returncode == 0
    os.write(terminal.master, b"\x03")
    assert terminal.exit_code() == 130


_COUNT_SIGNALS = """
import signal, sys
sigs = {int(sys.argv[1])}
signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
print("ready", flush=True)
n = 0
while signal.sigtimedwait(sigs, 2) is not None:
    n += 1
    print(f"got {n}", flush=True)
sys.exit(n)
"""

_FORWARD_TO_COUNTER = """
import signal, subprocess, sys
from layerdiff import runtime
counter = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
with runtime._forwarding(counter):
    sys.exit(counter.wait())
"""


@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGWINCH])
def test_a_terminals_signal_reaches_the_container_once(sig: int) -> None:
    """Ctrl-\\ and a window resize go from the terminal to its whole foreground process group,
    the container's processes included: run does not pass them on a second time. The command
    stands in for the container's: a process run started, in run's process group, counting
    each signal as it arrives. A copy passed on while the first is still pending merges with
    it, so the signal is sent several times."""
    terminal = _Terminal([sys.executable, "-c", _FORWARD_TO_COUNTER, _COUNT_SIGNALS, str(int(sig))])
    terminal.wait_for(b"ready")
    sends = 5
    for k in range(1, sends + 1):
        if sig == signal.SIGQUIT:
            os.write(terminal.master, b"\x1c")  # Ctrl-\, as typed
        else:
            winsize = struct.pack("HHHH", 40, 80 + k, 0, 0)
            fcntl.ioctl(terminal.master, termios.TIOCSWINSZ, winsize)
        terminal.wait_for(b"got %d" % k)
        time.sleep(0.1)  # time for a copy passed on to arrive
    assert terminal.exit_code() == sends, terminal.seen


def test_a_hang_up_of_runs_terminal_reaches_the_container(image: str, store_home: Path) -> None:
    """When the terminal goes away (an ssh session, a tmux window closed), the kernel sends
    SIGHUP to the session's leader alone, which run may be: run passes it on."""
    script = (
        "trap 'exit 5' HUP; echo ready; i=0; "
        "while [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; exit 3"
    )
    terminal = _Terminal(
        [sys.executable, "-m", "layerdiff", "run", "--rm", image, "sh", "-c", script]
    )
    terminal.wait_for(b"ready")
    os.close(terminal.master)  # the terminal hangs up
    assert terminal.exit_code() == 5


_ALARM_IN_THE_CALLER = """
import signal, sys
import layerdiff

class Timeout(Exception):
    pass

def on_alarm(_sig, _frame):
    raise Timeout

signal.signal(signal.SIGALRM, on_alarm)
signal.alarm(1)
try:
    layerdiff.run(sys.argv[1], ["sleep", "20"], rm=True)
except Timeout:
    print("the caller's timeout")
"""


def test_a_callers_own_alarm_stays_the_callers(image: str, store_home: Path) -> None:
    """An application timing out with alarm() keeps its SIGALRM: only a signal the caller
    leaves at its default action is passed on to the container."""
    done = subprocess.run(
        [sys.executable, "-c", _ALARM_IN_THE_CALLER, image],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.stdout == "the caller's timeout\n", done.stderr
    assert runtime.containers() == []


def test_run_from_a_worker_thread(image: str, store_home: Path) -> None:
    """Signal handlers can only be set in the main thread: from another, run leaves the
    application's alone instead of failing."""
    results: list[object] = []

    def work() -> None:
        try:
            results.append(layerdiff.run(image, ["sh", "-c", "exit 3"], rm=True).exit_code)
        except Exception as e:  # reported by the assertion below
            results.append(e)

    before = signal.getsignal(signal.SIGTERM)
    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=60)
    assert results == [3]
    assert signal.getsignal(signal.SIGTERM) is before


_API_RUN = """
import os, signal, sys, threading, time
import layerdiff
mode, image = sys.argv[1], sys.argv[2]
if mode == "thread":  # the application has a thread of its own
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
if mode == "late":  # a SIGINT from a process lands while run is putting things back
    kill = os.kill
    def late(pid, sig):
        kill(pid, sig)
        if sig == signal.SIGINT:
            time.sleep(0.2)  # the helper thread has taken the first and returned
            kill(os.getpid(), signal.SIGINT)
    os.kill = late
mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
command = ["sh", "-c", "echo ready; sleep 1; exit 7"]
try:
    code = layerdiff.run(image, command, rm=True).exit_code
except BaseException as e:
    code = repr(e)
restored = signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask and handlers == [
    signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)
]
print(code, restored, flush=True)
"""


@pytest.mark.parametrize("mode", ["thread", "late"])
def test_api_run_leaves_the_callers_signals_as_they_were(
    image: str, store_home: Path, mode: str
) -> None:
    """With another thread in the caller, SIGINT cannot be told apart and is ignored during
    the run (as before); one landing as the run ends (here: just after run has stopped its
    helper thread) never reaches the caller as a KeyboardInterrupt; the mask and handlers
    are put back either way."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _API_RUN, mode, image], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    if mode == "thread":
        proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert out == "7 True\n"


def _helper(read_fd: int) -> subprocess.Popen[str]:
    """The container helper as runtime starts it, reading its spec from ``read_fd``."""
    return subprocess.Popen(
        [sys.executable, "-S", "-E", str(runtime._HELPER), str(read_fd)],
        pass_fds=(read_fd,),
        stderr=subprocess.PIPE,
        text=True,
    )


def test_helper_left_without_a_spec_exits_quietly() -> None:
    """A caller interrupted before it wrote the whole spec: 125, and no traceback."""
    for spec in (b"", b'{"argv": ["sh"'):
        r, w = os.pipe()
        helper = _helper(r)
        os.close(r)
        os.write(w, spec)
        os.close(w)
        _, err = helper.communicate(timeout=30)
        assert (helper.returncode, err) == (125, "")


def test_helper_interrupted_while_starting_exits_130_quietly() -> None:
    r, w = os.pipe()
    helper = _helper(r)
    os.close(r)
    try:
        time.sleep(1)  # it is waiting for the spec
        helper.send_signal(signal.SIGINT)
        _, err = helper.communicate(timeout=30)
    finally:
        os.close(w)
    assert (helper.returncode, err) == (130, "")


def test_two_starts_of_one_container_run_it_once(image: str, store_home: Path) -> None:
    created = run_cli("create", "--name", "par", image, "--", "sh", "-c", "sleep 1; echo done")
    assert created.returncode == 0, created.stderr
    command = [sys.executable, "-m", "layerdiff", "start", "par"]
    starts = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = sorted((p.wait(timeout=60), *p.communicate()) for p in starts)
    (ok, out, _), (refused, _, err) = results
    assert (ok, out) == (0, "done\n")
    assert refused == 125 and "container par is already running" in err
