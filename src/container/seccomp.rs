//! The command's system-call filter: what docker's default seccomp profile refuses a container
//! without `CAP_SYS_ADMIN`, as a deny list (the capabilities dropped already refuse most of it
//! as well; the filter is the second wall, and the only one for the calls no capability
//! guards, such as `keyctl` and a user namespace).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Refused whatever their arguments.
const DENIED: &[libc::c_long] = &[
    // Kernel keyrings are not namespaced.
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    // Namespaces and mounts: a user namespace would give the command every capability in it.
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    // Tracing and kernel-side programs.
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    // Files by handle, bypassing the mount namespace.
    libc::SYS_open_by_handle_at,
    // The machine itself: modules, kexec, swap, clocks, accounting, quotas.
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_vhangup,
];

/// Namespace flags `clone` is refused with (`clone3`'s flags are in memory a filter cannot
/// read: it answers ENOSYS instead, and the C library falls back to `clone`).
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// The filters: EPERM for [`DENIED`] and for `clone` with a namespace flag, ENOSYS for
/// `clone3`. `None` on an architecture the filter compiler does not know.
fn filters() -> Result<Option<[BpfProgram; 2]>, String> {
    let Ok(arch) = TargetArch::try_from(std::env::consts::ARCH) else {
        return Ok(None);
    };
    let fail = |e: seccompiler::BackendError| format!("building the seccomp filter: {e}");
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&nr| (nr, vec![])).collect();
    let mut clone_rules = Vec::new();
    for &flag in NAMESPACE_FLAGS {
        let flag = flag as u64;
        // The flags are clone's first argument on every architecture built for.
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .map_err(fail)?;
        clone_rules.push(SeccompRule::new(vec![cond]).map_err(fail)?);
    }
    denied.insert(libc::SYS_clone, clone_rules);
    let eperm = SeccompFilter::new(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(fail)?;
    let enosys = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(fail)?;
    let compile = |f: SeccompFilter| BpfProgram::try_from(f).map_err(|e| format!("{e}"));
    Ok(Some([compile(eperm)?, compile(enosys)?]))
}

/// Install the filters in this process (the command, just before `execve`; `no_new_privs` is
/// set already). Nothing on an architecture the filter compiler does not know.
pub fn confine() -> Result<(), String> {
    let Some(programs) = filters()? else {
        return Ok(());
    };
    for program in &programs {
        seccompiler::apply_filter(program)
            .map_err(|e| format!("installing the seccomp filter: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_filters_build_for_this_machine() {
        let built = super::filters().expect("filters");
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert!(built.is_some());
        }
    }
}
