"""A seccomp filter for a child process, as a ``preexec_fn``: the system calls given fail with
an errno, as on a kernel that predates them (ENOSYS) or under a container profile that does
not know them (docker's: EPERM). x86_64 only; other architectures run unfiltered."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Sequence

#: A system call to refuse: its x86_64 number, or (number, argument index, value) to refuse
#: it only when that argument (its low 32 bits) has that value.
Rule = int | tuple[int, int, int]


def deny(rules: Sequence[Rule], err: int) -> Callable[[], None]:
    """A ``preexec_fn`` under which each of ``rules`` fails with ``err``."""

    def install() -> None:
        def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
            return struct.pack("=HBBI", code, jt, jf, k)

        ld, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K
        allow, fail = 0x7FFF0000, 0x00050000 | err  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO
        checks: list[bytes] = []
        for rule in rules:
            if not isinstance(rule, tuple):
                checks += [op(jeq, rule, 0, 1), op(ret, fail)]
            else:  # seccomp_data.args[arg] at 16 + 8 * arg (low half, little-endian)
                nr, arg, value = rule
                checks += [
                    op(jeq, nr, 0, 3),
                    op(ld, 16 + 8 * arg),
                    op(jeq, value, 0, 1),
                    op(ret, fail),
                    op(ld, 0),  # seccomp_data.nr again, for the rules after this one
                ]
        prog = b"".join(
            [
                op(ld, 4),  # seccomp_data.arch
                op(jeq, 0xC000003E, 1, 0),  # AUDIT_ARCH_X86_64
                op(ret, allow),
                op(ld, 0),  # seccomp_data.nr
                *checks,
                op(ret, allow),
            ]
        )
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(prog)
        fprog = struct.pack("=HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))
        if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0):
            raise OSError(ctypes.get_errno(), "seccomp")  # PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP

    return install
