/* Error codes: errno values and tpio's own, named and described from one
 * table each (the TPIO_ERRORS X-macro lives in the public header). */
#include "base/base.h"

#include <stdio.h>
#include <string.h>

/* errno names known on this platform (aliases such as EWOULDBLOCK share a
 * value with the name listed). */
#define TPIO__ERRNO_NAMES(X) \
    X(EPERM) \
    X(ENOENT) \
    X(ESRCH) \
    X(EINTR) \
    X(EIO) \
    X(ENXIO) \
    X(E2BIG) \
    X(ENOEXEC) \
    X(EBADF) \
    X(ECHILD) \
    X(EAGAIN) \
    X(ENOMEM) \
    X(EACCES) \
    X(EFAULT) \
    X(ENOTBLK) \
    X(EBUSY) \
    X(EEXIST) \
    X(EXDEV) \
    X(ENODEV) \
    X(ENOTDIR) \
    X(EISDIR) \
    X(EINVAL) \
    X(ENFILE) \
    X(EMFILE) \
    X(ENOTTY) \
    X(ETXTBSY) \
    X(EFBIG) \
    X(ENOSPC) \
    X(ESPIPE) \
    X(EROFS) \
    X(EMLINK) \
    X(EPIPE) \
    X(EDOM) \
    X(ERANGE) \
    X(EDEADLOCK) \
    X(ENAMETOOLONG) \
    X(ENOLCK) \
    X(ENOSYS) \
    X(ENOTEMPTY) \
    X(ELOOP) \
    X(ENOMSG) \
    X(EIDRM) \
    X(ECHRNG) \
    X(EL2NSYNC) \
    X(EL3HLT) \
    X(EL3RST) \
    X(ELNRNG) \
    X(EUNATCH) \
    X(ENOCSI) \
    X(EL2HLT) \
    X(EBADE) \
    X(EBADR) \
    X(EXFULL) \
    X(ENOANO) \
    X(EBADRQC) \
    X(EBADSLT) \
    X(EBFONT) \
    X(ENOSTR) \
    X(ENODATA) \
    X(ETIME) \
    X(ENOSR) \
    X(ENONET) \
    X(ENOPKG) \
    X(EREMOTE) \
    X(ENOLINK) \
    X(EADV) \
    X(ESRMNT) \
    X(ECOMM) \
    X(EPROTO) \
    X(EMULTIHOP) \
    X(EDOTDOT) \
    X(EBADMSG) \
    X(EOVERFLOW) \
    X(ENOTUNIQ) \
    X(EBADFD) \
    X(EREMCHG) \
    X(ELIBACC) \
    X(ELIBBAD) \
    X(ELIBSCN) \
    X(ELIBMAX) \
    X(ELIBEXEC) \
    X(EILSEQ) \
    X(ERESTART) \
    X(ESTRPIPE) \
    X(EUSERS) \
    X(ENOTSOCK) \
    X(EDESTADDRREQ) \
    X(EMSGSIZE) \
    X(EPROTOTYPE) \
    X(ENOPROTOOPT) \
    X(EPROTONOSUPPORT) \
    X(ESOCKTNOSUPPORT) \
    X(ENOTSUP) \
    X(EPFNOSUPPORT) \
    X(EAFNOSUPPORT) \
    X(EADDRINUSE) \
    X(EADDRNOTAVAIL) \
    X(ENETDOWN) \
    X(ENETUNREACH) \
    X(ENETRESET) \
    X(ECONNABORTED) \
    X(ECONNRESET) \
    X(ENOBUFS) \
    X(EISCONN) \
    X(ENOTCONN) \
    X(ESHUTDOWN) \
    X(ETOOMANYREFS) \
    X(ETIMEDOUT) \
    X(ECONNREFUSED) \
    X(EHOSTDOWN) \
    X(EHOSTUNREACH) \
    X(EALREADY) \
    X(EINPROGRESS) \
    X(ESTALE) \
    X(EUCLEAN) \
    X(ENOTNAM) \
    X(ENAVAIL) \
    X(EISNAM) \
    X(EREMOTEIO) \
    X(EDQUOT) \
    X(ENOMEDIUM) \
    X(EMEDIUMTYPE) \
    X(ECANCELED) \
    X(ENOKEY) \
    X(EKEYEXPIRED) \
    X(EKEYREVOKED) \
    X(EKEYREJECTED) \
    X(EOWNERDEAD) \
    X(ENOTRECOVERABLE) \
    X(ERFKILL) \
    /* end */

const char *tpio_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
#define TPIO__ERR_TEXT(name, value, text) \
    case value:                           \
        return text;
        TPIO_ERRORS(TPIO__ERR_TEXT)
#undef TPIO__ERR_TEXT
    default:
        break;
    }
    if (err < 0 && err > -4096)
        return strerror(-err); /* glibc returns static text for known codes */
    return "unknown error";
}

const char *tpio_err_name(int err)
{
    switch (err) {
    case 0:
        return "OK";
#define TPIO__ERR_NAME(name, value, text) \
    case value:                           \
        return #name;
        TPIO_ERRORS(TPIO__ERR_NAME)
#undef TPIO__ERR_NAME
#define TPIO__ERRNO_CASE(name) \
    case -name:                \
        return #name;
        TPIO__ERRNO_NAMES(TPIO__ERRNO_CASE)
#undef TPIO__ERRNO_CASE
    default:
        return "UNKNOWN";
    }
}

int tpio__gai_error(int eai)
{
    switch (eai) {
    case 0:
        return 0;
    case EAI_NONAME:
        return TPIO_EAI_NONAME;
    case EAI_AGAIN:
        return TPIO_EAI_AGAIN;
    case EAI_FAIL:
        return TPIO_EAI_FAIL;
    case EAI_FAMILY:
        return TPIO_EAI_FAMILY;
#ifdef EAI_NODATA
    case EAI_NODATA:
        return TPIO_EAI_NODATA;
#endif
#ifdef EAI_ADDRFAMILY
    case EAI_ADDRFAMILY:
        return TPIO_EAI_FAMILY;
#endif
    case EAI_SERVICE:
        return TPIO_EAI_SERVICE;
    case EAI_MEMORY:
        return TPIO_EAI_MEMORY;
    case EAI_SYSTEM:
        return errno ? -errno : TPIO_EAI_OTHER;
    default:
        return TPIO_EAI_OTHER;
    }
}
