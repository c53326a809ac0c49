//! The command's system-call filter: what docker's default seccomp profile refuses a container
//! without `CAP_SYS_ADMIN`, as a deny list (the capabilities dropped already refuse most of it
//! as well; the filter is the second wall, and the only one for the calls no capability
//! guards, such as `keyctl` and a user namespace).
//!
//! Written here rather than with a filter compiler: the one for Rust kills a process whose
//! call comes from another ABI of the machine, and a 32-bit program in an x86-64 container
//! (docker runs them) makes every call so. The i386 ABI gets the same deny list by its own
//! numbers; x32 calls (numbers with bit 30 set, under the x86-64 architecture value) are
//! refused whole, as libseccomp refuses them. Calls of any other ABI (arm on an aarch64 host)
//! pass unfiltered.

/// `sock_filter` op codes.
const LD_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JSET: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const RET: u16 = 0x06; // BPF_RET | BPF_K

/// `struct seccomp_data` offsets: the call's number, its architecture, its first argument
/// (low half, little-endian).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0: u32 = 16;
const ARG1: u32 = 24;

/// `ioctl` requests refused: pushing input into a terminal (`TIOCSTI`), which a command whose
/// streams are the caller's terminal would type into the caller's shell with, and the Linux
/// console's own (`TIOCLINUX`, whose selection paste does the same).
const TERMINAL_INPUT: [u32; 2] = [0x5412, 0x541C];

const ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
const ERRNO: u32 = 0x0005_0000; // SECCOMP_RET_ERRNO | errno

/// Namespace flags `clone` is refused with. `clone3`'s flags are in memory a filter cannot
/// read: it answers ENOSYS instead, and the C library falls back to `clone`.
const NAMESPACES: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32;

/// One ABI's numbers.
struct Abi {
    /// `AUDIT_ARCH_*`.
    arch: u32,
    /// Refused whatever their arguments.
    denied: &'static [u32],
    clone: u32,
    clone3: u32,
    ioctl: u32,
    /// `kill`, refused for pid 0: the command is in the caller's process group (for job
    /// control), which `kill(0, …)` would signal whole, the caller and its pipeline included.
    kill: u32,
    /// Refuse every number with bit 30 set (x32's, on x86-64).
    x32: bool,
}

#[cfg(target_arch = "x86_64")]
const ABIS: &[Abi] = &[
    Abi {
        arch: 0xC000_003E, // AUDIT_ARCH_X86_64
        denied: &NATIVE,
        clone: libc::SYS_clone as u32,
        clone3: libc::SYS_clone3 as u32,
        ioctl: libc::SYS_ioctl as u32,
        kill: libc::SYS_kill as u32,
        x32: true,
    },
    Abi {
        arch: 0x4000_0003, // AUDIT_ARCH_I386
        // The same calls by the i386 numbers (arch/x86/entry/syscalls/syscall_32.tbl).
        denied: &[
            288, 286, 287, // keyctl, add_key, request_key
            310, 346, // unshare, setns
            21, 52, 217, 430, 431, 432, 433, 428, 429, 442, // mount .. mount_setattr
            357, 336, 374, 342,
            338, // bpf, perf_event_open, userfaultfd, open_by_handle_at, fanotify_init
            128, 350, 129, 283, // init_module, finit_module, delete_module, kexec_load
            88, 87, 115, // reboot, swapon, swapoff
            79, 264, 404, // settimeofday, clock_settime, clock_settime64
            51, 131, 443, 103, 111,
            253, // acct, quotactl, quotactl_fd, syslog, vhangup, lookup_dcookie
        ],
        clone: 120,
        clone3: 435,
        ioctl: 54,
        kill: 37,
        x32: false,
    },
];

#[cfg(target_arch = "aarch64")]
const ABIS: &[Abi] = &[Abi {
    arch: 0xC000_00B7, // AUDIT_ARCH_AARCH64
    denied: &NATIVE,
    clone: libc::SYS_clone as u32,
    clone3: libc::SYS_clone3 as u32,
    ioctl: libc::SYS_ioctl as u32,
    kill: libc::SYS_kill as u32,
    x32: false,
}];

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ABIS: &[Abi] = &[];

/// This machine's own numbers of the calls refused.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const NATIVE: [u32; 36] = [
    // Kernel keyrings are not namespaced.
    libc::SYS_keyctl as u32,
    libc::SYS_add_key as u32,
    libc::SYS_request_key as u32,
    // Namespaces and mounts: a user namespace would give the command every capability in it.
    libc::SYS_unshare as u32,
    libc::SYS_setns as u32,
    libc::SYS_mount as u32,
    libc::SYS_umount2 as u32,
    libc::SYS_pivot_root as u32,
    libc::SYS_fsopen as u32,
    libc::SYS_fsconfig as u32,
    libc::SYS_fsmount as u32,
    libc::SYS_fspick as u32,
    libc::SYS_open_tree as u32,
    libc::SYS_move_mount as u32,
    libc::SYS_mount_setattr as u32,
    // Tracing, kernel-side programs, other processes' files.
    libc::SYS_bpf as u32,
    libc::SYS_perf_event_open as u32,
    libc::SYS_userfaultfd as u32,
    libc::SYS_open_by_handle_at as u32,
    libc::SYS_fanotify_init as u32,
    // The machine itself: modules, kexec, reboot, swap, clocks (reading them stays allowed),
    // accounting, quotas, the kernel log.
    libc::SYS_init_module as u32,
    libc::SYS_finit_module as u32,
    libc::SYS_delete_module as u32,
    libc::SYS_kexec_load as u32,
    libc::SYS_kexec_file_load as u32,
    libc::SYS_reboot as u32,
    libc::SYS_swapon as u32,
    libc::SYS_swapoff as u32,
    libc::SYS_settimeofday as u32,
    libc::SYS_clock_settime as u32,
    libc::SYS_acct as u32,
    libc::SYS_quotactl as u32,
    libc::SYS_quotactl_fd as u32,
    libc::SYS_syslog as u32,
    libc::SYS_vhangup as u32,
    libc::SYS_lookup_dcookie as u32,
];

fn op(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The checks of one ABI, entered with its architecture matched; every path ends in a
/// return.
fn abi_block(abi: &Abi) -> Vec<libc::sock_filter> {
    let eperm = op(RET, ERRNO | libc::EPERM as u32, 0, 0);
    let mut v = vec![op(LD_ABS, NR, 0, 0)];
    if abi.x32 {
        v.extend([op(JGE, 0x4000_0000, 0, 1), eperm]);
    }
    for &nr in abi.denied {
        v.extend([op(JEQ, nr, 0, 1), eperm]);
    }
    v.extend([
        op(JEQ, abi.kill, 0, 4),
        op(LD_ABS, ARG0, 0, 0),
        op(JEQ, 0, 1, 0),
        op(RET, ALLOW, 0, 0),
        eperm,
        op(JEQ, abi.ioctl, 0, 5),
        op(LD_ABS, ARG1, 0, 0),
        op(JEQ, TERMINAL_INPUT[0], 2, 0),
        op(JEQ, TERMINAL_INPUT[1], 1, 0),
        op(RET, ALLOW, 0, 0),
        eperm,
        op(JEQ, abi.clone3, 0, 1),
        op(RET, ERRNO | libc::ENOSYS as u32, 0, 0),
        op(JEQ, abi.clone, 0, 4),
        op(LD_ABS, ARG0, 0, 0),
        op(JSET, NAMESPACES, 0, 1),
        eperm,
        op(RET, ALLOW, 0, 0),
        op(RET, ALLOW, 0, 0),
    ]);
    v
}

/// The whole program: each ABI's block behind a test of its architecture; any other passes.
fn program() -> Vec<libc::sock_filter> {
    let mut v = vec![op(LD_ABS, ARCH, 0, 0)];
    for abi in ABIS {
        let block = abi_block(abi);
        let skip = u8::try_from(block.len()).expect("an ABI's block fits a jump");
        // Not this ABI: on past its block (which always returns), the architecture still
        // loaded for the next test.
        v.push(op(JEQ, abi.arch, 0, skip));
        v.extend(block);
    }
    v.push(op(RET, ALLOW, 0, 0));
    v
}

/// Install the filter in this process (the command, just before `execve`; `no_new_privs` is
/// set already).
pub fn confine() -> Result<(), String> {
    if ABIS.is_empty() {
        return Ok(());
    }
    let mut filters = program();
    let prog = libc::sock_fprog {
        len: u16::try_from(filters.len()).map_err(|_| "seccomp filter too long".to_string())?,
        filter: filters.as_mut_ptr(),
    };
    // SAFETY: prctl with a filter program we own, alive for the call; the kernel copies it.
    let done = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    if done != 0 {
        return Err(super::os_fail("installing the seccomp filter"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the program over one call, as the kernel would.
    fn verdict(prog: &[libc::sock_filter], arch: u32, nr: u32, arg0: u32) -> u32 {
        verdict_args(prog, arch, nr, [arg0, 0])
    }

    fn verdict_args(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u32; 2]) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let ins = prog[pc];
            match ins.code {
                LD_ABS => {
                    acc = match ins.k {
                        NR => nr,
                        ARCH => arch,
                        ARG0 => args[0],
                        ARG1 => args[1],
                        other => panic!("load of offset {other}"),
                    }
                }
                RET => return ins.k,
                JEQ | JGE | JSET => {
                    let taken = match ins.code {
                        JEQ => acc == ins.k,
                        JGE => acc >= ins.k,
                        _ => acc & ins.k != 0,
                    };
                    pc += usize::from(if taken { ins.jt } else { ins.jf });
                }
                other => panic!("op {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn the_filter_refuses_what_it_lists_and_lets_the_rest_through() {
        let prog = program();
        let eperm = ERRNO | libc::EPERM as u32;
        for abi in ABIS {
            for &nr in abi.denied {
                assert_eq!(verdict(&prog, abi.arch, nr, 0), eperm, "{nr}");
            }
            let user = libc::CLONE_NEWUSER as u32;
            assert_eq!(verdict(&prog, abi.arch, abi.clone, user), eperm);
            let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u32;
            assert_eq!(verdict(&prog, abi.arch, abi.clone, thread), ALLOW);
            assert_eq!(
                verdict(&prog, abi.arch, abi.clone3, 0),
                ERRNO | libc::ENOSYS as u32
            );
            for request in TERMINAL_INPUT {
                assert_eq!(
                    verdict_args(&prog, abi.arch, abi.ioctl, [0, request]),
                    eperm
                );
            }
            assert_eq!(verdict_args(&prog, abi.arch, abi.kill, [0, 15]), eperm);
            for pid in [1, 7, (-1i32) as u32, (-7i32) as u32] {
                assert_eq!(verdict_args(&prog, abi.arch, abi.kill, [pid, 15]), ALLOW);
            }
            let tcgets = 0x5401;
            assert_eq!(verdict_args(&prog, abi.arch, abi.ioctl, [0, tcgets]), ALLOW);
            for nr in [0, 1, 2, 3, 60, 231] {
                if !abi.denied.contains(&nr) && nr != abi.clone && nr != abi.clone3 {
                    assert_eq!(verdict(&prog, abi.arch, nr, 0), ALLOW, "{nr}");
                }
            }
        }
        if cfg!(target_arch = "x86_64") {
            let x32_unshare = 0x4000_0000 | libc::SYS_unshare as u32;
            assert_eq!(verdict(&prog, 0xC000_003E, x32_unshare, 0), eperm);
        }
        assert_eq!(verdict(&prog, 0x4000_0028, 0, 0), ALLOW); // another ABI: unfiltered
    }
}
