//! Binding of the container runner: only ever called in the fresh helper process.

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::container::{self, ContainerSpec};

/// Run a container (see `crate::container`) and return its exit code. Must be called in a
/// single-threaded process: it makes namespaces and forks the container's PID 1.
#[pyfunction]
#[pyo3(signature = (
    *, argv, env, cwd, user, hostname, layers_dir, lowers, upper, work, rootfs, binds,
    volumes = Vec::new(), rootless = false, new_network = false, error_fd = 2, parent_pid = 0, cgroup_fds = Vec::new(),
    console_fd = -1, console_size = (0, 0)
))]
#[allow(clippy::too_many_arguments)] // mirrors the keyword-only Python signature
pub fn run_container(
    py: Python<'_>,
    argv: Vec<String>,
    env: Vec<String>,
    cwd: String,
    user: String,
    hostname: String,
    layers_dir: PathBuf,
    lowers: Vec<String>,
    upper: PathBuf,
    work: PathBuf,
    rootfs: PathBuf,
    binds: Vec<(PathBuf, String)>,
    volumes: Vec<(PathBuf, String)>,
    rootless: bool,
    new_network: bool,
    error_fd: i32,
    parent_pid: i32,
    cgroup_fds: Vec<i32>,
    console_fd: i32,
    console_size: (u16, u16),
) -> i32 {
    let spec = ContainerSpec {
        rootless,
        new_network,
        hostname,
        layers_dir,
        lowers,
        upper,
        work,
        rootfs,
        binds,
        volumes,
        argv,
        env,
        cwd,
        user,
        error_fd,
        parent_pid,
        cgroup_fds,
        console_fd,
        console_size,
    };
    // Detached on this same thread: a helper thread would make the process multi-threaded,
    // and the kernel refuses a new user or mount namespace to such a process.
    py.detach(|| container::run(&spec))
}
