"""Faults of the machine, told apart from faults of the data.

A video that does not decode or a shard whose checksums fail is the data's fault: it is recorded
(a failed video) or named with its remedy (re-extract the shard). Running out of memory, of
file descriptors or of disk space, or a decoder killed by a signal (the kernel's out-of-memory
killer), says nothing about the data: the same bytes succeed on the next run. Such a fault stops
the command with a :class:`MachineFaultError` and is never written as the data's result, so
healthy data is never called damaged and a video is never skipped for good because the machine
was busy.
"""

from __future__ import annotations

import errno
import os
import re
import signal

from distinit.pipeline.errors import MachineFaultError

# errno values that describe the machine's limits, never the bytes being read or written.
RESOURCE_ERRNOS = frozenset(
    {
        errno.EMFILE,  # this process's open-file limit (ulimit -n)
        errno.ENFILE,  # the system's open-file table
        errno.ENOMEM,  # memory (also a failed fork)
        errno.EAGAIN,  # a failed fork: the process limit (ulimit -u)
        errno.ENOSPC,  # a full disk
        errno.EDQUOT,  # a disk quota
        errno.EFBIG,  # a file-size limit (ulimit -f)
        errno.ENOBUFS,  # kernel buffers
    }
)
# h5py reports a failed open as "... errno = 24, error message = 'Too many open files' ...",
# with OSError.errno set only for some calls: the text is the one place the number always is.
_HDF5_ERRNO = re.compile(r"errno = (\d+)")
_REMEDIES = {
    errno.EMFILE: "raise the open-file limit (ulimit -n) or use fewer loader workers",
    errno.ENFILE: "the system's open-file table is full; close other programs",
    errno.ENOMEM: "free memory or use fewer workers",
    errno.EAGAIN: "free memory or raise the process limit (ulimit -u)",
    errno.ENOSPC: "free disk space",
    errno.EDQUOT: "free space within the disk quota",
    errno.EFBIG: "raise the file-size limit (ulimit -f)",
    errno.ENOBUFS: "the kernel is short of buffers; free memory",
}


def resource_errno(exc: BaseException) -> int | None:
    """The errno of ``exc`` when it is one of :data:`RESOURCE_ERRNOS`, else None."""
    if isinstance(exc, MemoryError):
        return errno.ENOMEM
    if not isinstance(exc, OSError):
        return None
    if exc.errno in RESOURCE_ERRNOS:
        return exc.errno
    code = hdf5_errno(str(exc))
    return code if code in RESOURCE_ERRNOS else None


def hdf5_errno(text: str) -> int | None:
    """The errno an HDF5 error message quotes, if any."""
    m = _HDF5_ERRNO.search(text)
    return int(m.group(1)) if m else None


def open_file_limit_in_text(text: str) -> int | None:
    """EMFILE or ENFILE when a program's output (ffmpeg's stderr) says it hit the open-file
    limit, else None. Only these two: ffmpeg also prints "Cannot allocate memory" for a corrupt
    header that asks for an absurd frame size, a fault of the video; a machine truly out of
    memory kills the decoder instead (see :func:`killed_decoder`)."""
    return next((c for c in (errno.EMFILE, errno.ENFILE) if os.strerror(c) in text), None)


def resource_fault(code: int, subject: str) -> MachineFaultError:
    """The one-line error for resource errno ``code`` met while working on ``subject``."""
    return MachineFaultError(
        f"{subject}: {os.strerror(code)} ({errno.errorcode[code]}), a limit of this machine, "
        f"not a fault of the data; {_REMEDIES[code]} and run the same command again"
    )


def machine_fault(exc: BaseException, subject: str) -> MachineFaultError | None:
    """The one-line error for ``exc`` if it is a fault of the machine (None when it is not):
    ``subject`` is what was being read or made, e.g. a shard's path."""
    code = resource_errno(exc)
    return None if code is None else resource_fault(code, subject)


def killed_decoder(subject: str, returncode: int, frames: int) -> MachineFaultError:
    """The error for a decoder that died of a signal after ``frames`` frames (``returncode``
    is ``-signum``, as subprocess reports it): its output is cut short, not the video's end."""
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    hint = " (the out-of-memory killer?)" if -returncode == signal.SIGKILL else ""
    return MachineFaultError(
        f"{subject}: ffmpeg was killed by {name}{hint} after {frames} frames, a fault of the "
        "machine, not of the video; run the same command again (extract redoes the video)"
    )
