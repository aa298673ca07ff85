/* fq_status.h — status codes shared by every C module of fastq.
 *
 * Functions return an int (or int64_t) status: >= 0 is success (often a count or a
 * length), -errno for operating-system failures, and the named FQ_E... codes below for
 * domain failures. The domain codes sit far below any errno value so they never collide.
 */
#ifndef FQ_STATUS_H
#define FQ_STATUS_H

enum {
    FQ_OK = 0,
    FQ_EBASE = -10000,
    FQ_ECORRUPT = -10001,   /* bytes failed validation (CRC, magic, framing) */
    FQ_ETRUNCATED = -10002, /* a structure runs past the end of the available bytes */
    FQ_ETOOBIG = -10003,    /* a length exceeds a cap or the destination's room */
    FQ_EINVAL = -10004,     /* an argument is out of range */
    FQ_EFULL = -10005,      /* no room (ring full, segment full) */
    FQ_EEMPTY = -10006,     /* nothing to take (ring empty) */
    FQ_ETIMEDOUT = -10007,  /* a wait ran out of time */
    FQ_ECLOSED = -10008,    /* the object was closed */
    FQ_EUNSUPPORTED = -10009, /* not available on this platform */
    FQ_EMAGIC = -10010,     /* wrong magic byte / unknown format version */
    FQ_ESTALE = -10011,     /* a lease that is no longer current (queue acks) */
};

#endif
