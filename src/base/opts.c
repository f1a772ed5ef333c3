/* Options structs of any version: the caller's struct starts with its own
 * size, so a program built against an older header passes a shorter struct
 * and one built against a newer header a longer one (as the kernel's
 * copy_struct_from_user). */
#include "base/base.h"

#include <string.h>

int tpio__opts_copy(void *dst, size_t dst_size, size_t min, const void *src)
{
    size_t size;
    memcpy(&size, src, sizeof size);
    if (size < min)
        return -EINVAL; /* not set (0) or not a struct of any version */
    memset(dst, 0, dst_size);
    if (size > dst_size) {
        /* Fields this library does not know: fine while left at zero (their
         * default), refused when set, since they would be ignored. */
        const unsigned char *extra = (const unsigned char *)src + dst_size;
        for (size_t i = 0; i < size - dst_size; i++)
            if (extra[i])
                return -ENOTSUP;
        size = dst_size;
    }
    memcpy(dst, src, size);
    return 0;
}
