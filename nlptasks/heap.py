"""glibc's heap on long CPU runs: the two ways this package makes it hand freed memory back, and the
process's peak resident memory measured per run.

Tensors of every size (length-grouped batches; QLoRA's weights dequantized at every use) fragment
glibc's heap, and freed blocks stay resident because new ones do not fit them. Both remedies are
glibc calls through `ctypes` and do nothing under another C library (macOS, musl); a non-fragmenting
allocator (jemalloc, tcmalloc through `LD_PRELOAD`) is the cure a pip package cannot install for its user.
"""

from __future__ import annotations

import contextlib
import ctypes
import resource
from collections.abc import Callable
from pathlib import Path

M_MMAP_THRESHOLD = -3  # <malloc.h>


def _glibc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim` (free heap pages back to the OS, at the cost of page faults when reused), or None."""
    libc = _glibc()
    return getattr(libc, "malloc_trim", None) if libc is not None else None


def serve_large_blocks_by_mmap(threshold: int = 64 * 1024) -> None:
    """Serve blocks of `threshold` bytes and more by mmap, unmapped when freed, for the rest of the process.

    Fixing the threshold also stops glibc from raising it after each free. Costs a page fault per
    large allocation: a trade of speed for memory, taken where memory is the point (QLoRA).
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, threshold)


def reset_peak_rss() -> None:
    """Start the process's resident-memory high-water mark afresh (Linux), so a run in a process that ran
    others before it (`quickstart`, `compare`, a notebook) reports its own peak, not the process's."""
    with contextlib.suppress(OSError):  # not Linux, or /proc read-only: the peak stays the process's lifetime peak
        Path("/proc/self/clear_refs").write_text("5")


def resident_bytes() -> int:
    """The process's resident memory now (Linux; 0 elsewhere): one read of `/proc/self/statm`, cheap enough per step."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * resource.getpagesize()


def peak_rss_megabytes() -> float:
    """The high-water mark of resident memory since the last `reset_peak_rss` (else since the process began)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
