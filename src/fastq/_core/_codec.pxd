# Header of fastq._core._codec: the Python face of the plain-C codec (CRC-32C, varints,
# RecordBatch v2, index searches) and the one mapping of C status codes to exceptions.
# Other Cython modules may `from fastq._core._codec cimport check_status, status_error`.
from libc.stdint cimport int64_t


cdef enum:
    ERR_OP_NONE = 0    # status_error context: no operation-specific meaning
    ERR_OP_PUT = 1     # a ring put: FULL, and TIMEDOUT, mean RingFull
    ERR_OP_GET = 2     # a ring get: EMPTY, and TIMEDOUT, mean RingEmpty
    ERR_OP_SYNC = 3    # an fsync/msync: every OS error is FsyncFailed (never retried)

# The exception for a negative status `rc` (FQ_E... code or -errno) — the one mapping;
# `what` names the operation or structure, `path` the file, `position` a byte offset
# (None when unknown), `op` one of ERR_OP_* above.
cdef object status_error(int64_t rc, str what, object path=*, object position=*, int op=*)
# Raise status_error(rc, ...) when rc < 0; return 0 otherwise.
cdef int check_status(int64_t rc, str what, object position=*) except -1
