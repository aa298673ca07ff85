# fastq._core._storage, included: the injected-fault hook of csrc/fq_os.h — a TEST-ONLY API
# (docs/ARCHITECTURE.md, "Fault injection"; tests/faultfs.py wraps it).

cdef extern from "fq_os.h" nogil:
    int FQ_FP_COUNT
    int fq_fault_arm(int point, int err, int64_t after, int64_t times)
    void fq_fault_clear()
    int64_t fq_fault_hits(int point)
    int64_t fq_fault_calls(int point)


# the fault points of csrc/fq_os.h, in enum fq_fault_point order
FAULT_POINTS = ("open", "stat", "preallocate", "map", "datasync", "msync", "fsync_dir", "flock")


cdef int _fault_point(str point) except -1:
    try:
        return FAULT_POINTS.index(point)
    except ValueError:
        raise InvalidArgument(f"fault point {point!r}: expected one of {FAULT_POINTS}") from None


def _fault_inject(str point, int errno, int64_t after=0, int64_t times=1):
    """TEST ONLY. Make the C fault point ``point`` (one of FAULT_POINTS) fail with
    ``-errno``: its first ``after`` calls from now run for real, the next ``times``
    (``times < 0``: every later one) return the error without the system call.
    Process-wide for this module's calls (the log, segments, topic notifier, fsync_dir,
    flock); the ring module has its own, unarmed, copy. Re-arming a point resets its
    counters. Undo with :func:`_fault_clear`."""
    assert FQ_FP_COUNT == len(FAULT_POINTS)
    if errno <= 0:
        raise InvalidArgument(f"errno={errno}: expected a positive errno value")
    if after < 0:
        raise InvalidArgument(f"after={after}: expected >= 0")
    fq_fault_arm(_fault_point(point), errno, after, times)


def _fault_clear():
    """TEST ONLY. Disarm every fault point and zero their counters."""
    fq_fault_clear()


def _fault_hits(str point):
    """TEST ONLY. Calls of ``point`` failed on purpose since it was armed."""
    return fq_fault_hits(_fault_point(point))


def _fault_calls(str point):
    """TEST ONLY. Calls of ``point`` seen (failed or not) since it was armed; 0 when it
    is not armed (unarmed points are not counted: the off path is one branch)."""
    return fq_fault_calls(_fault_point(point))
