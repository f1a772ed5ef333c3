/* The version string, from the header's macros: the one place it is set. */
#include "base/base.h"

#define STR(x) #x
#define XSTR(x) STR(x)

const char *tpio_version(void)
{
    return XSTR(TPIO_VERSION_MAJOR) "." XSTR(TPIO_VERSION_MINOR) "." XSTR(TPIO_VERSION_PATCH);
}
