"""Run a command under a seccomp filter that denies some system calls with EPERM, as a container
runtime's profile does (Docker's default denies pivot_root; without CAP_SYS_ADMIN it also denies
unshare and mount). The restriction is the child's own: the test process is never touched.

    python -m tests.services.validation.restrict --deny pivot_root,unshare -- ARGV...
"""

from __future__ import annotations

import argparse
import errno
import os

from services.validation.sandbox import kernel

SYSCALLS_X86_64 = {"mount": 165, "pivot_root": 155, "chroot": 161, "unshare": 272, "mount_setattr": 442}


def deny_filter(names: list[str]) -> kernel.SeccompFilter:
    insns = kernel.SeccompFilter._prologue()
    for name in names:
        insns += [
            (kernel._BPF_JMP_JEQ_K, 0, 1, SYSCALLS_X86_64[name]),
            (kernel._BPF_RET_K, 0, 0, kernel._RET_ERRNO | errno.EPERM),
        ]
    insns.append((kernel._BPF_RET_K, 0, 0, kernel._RET_ALLOW))
    return kernel.SeccompFilter(insns)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deny", default="", help="comma-separated system call names")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    names = [n for n in args.deny.split(",") if n]
    if names:
        kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1)
        deny_filter(names).install()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
