"""Keeping a large message's memory small: giving its buffers back to the system once it
is handled (where it is sealed or opened is `workers.run`).

glibc's malloc serves a buffer from its heap unless it is above the mmap threshold, and it
raises that threshold (up to 32 MB) each time a large block is freed. Freed heap memory
mostly stays with the process: after one 30 MB message a bridge kept a few hundred MB it
no longer used. With a fixed threshold of 1 MiB every large buffer gets a mapping of its
own, which free() gives back at once.
"""

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD_BYTES = 1 << 20


def return_large_buffers() -> None:
    """Set the fixed threshold where the C library is glibc (Debian's); elsewhere there is
    nothing to do."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)
