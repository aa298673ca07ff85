# Header of fastq._codec: the Python face of the plain-C codec (CRC-32C, varints,
# RecordBatch v2, index searches) and the one mapping of C status codes to exceptions.
# Other Cython modules may `from fastq._codec cimport check_status, status_error`.
from libc.stdint cimport int64_t


# The exception for a negative status `rc` (FQ_E... code or -errno); `what` names the
# operation or structure, `position` is a byte offset or None.
cdef object status_error(int64_t rc, str what, object position)
# Raise status_error(rc, ...) when rc < 0; return 0 otherwise.
cdef int check_status(int64_t rc, str what, object position=*) except -1
