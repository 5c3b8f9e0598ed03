"""The host allocator of a training process: keep freed memory for reuse instead of handing it back to the OS.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps it on
free, and trims the heap's top; a CPU training step frees and reallocates its large activations every step, so
each step faults all their pages in again (s7_dilated_v1 on a 2-core Xeon: about 100,000 page faults a second, a
fifth of the process's CPU time in the kernel). PyTorch's CPU guide answers this by preloading jemalloc or
tcmalloc (`torch.backends.xeon.run_cpu`), which needs a library installed and a relaunch; mallopt from the
running process needs neither, so it is set here.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
_KEEP = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))  # no mmap'd blocks; never trim the heap's top


def keep_freed_memory() -> str:
    """Make this process's glibc malloc keep what is freed (for the process and the loader workers it forks
    later); returns what was done, for train.log. Elsewhere (musl, macOS, Windows) the allocator is left alone."""
    if platform.libc_ver()[0] != "glibc":
        return "allocator left as it is (not glibc)"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not all(libc.mallopt(param, value) == 1 for param, value in _KEEP):
        return "allocator left as it is (glibc refused mallopt)"
    return "glibc malloc keeps freed memory for reuse (no mmap per block, no trim)"
