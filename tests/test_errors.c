/* Error codes: tpio_strerror() / tpio_err_name() for errno values, for every
 * TPIO_* code of the TPIO_ERRORS table, for 0 and for unknown values. */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <tpio.h>
#include "helpers.h"

struct tpio_code {
    int value;
    const char *name;
    const char *text;
};

static const struct tpio_code tpio_codes[] = {
#define X(name, value, text) {value, #name, text},
    TPIO_ERRORS(X)
#undef X
};
#define N_TPIO_CODES (sizeof tpio_codes / sizeof tpio_codes[0])

#define E(x) {x, #x}
static const struct {
    int value;
    const char *name;
} errno_codes[] = {
    E(EPERM),        E(ENOENT),        E(EINTR),        E(EBADF),
    E(EAGAIN),       E(ENOMEM),        E(EACCES),       E(EBUSY),
    E(EEXIST),       E(EINVAL),        E(ENFILE),       E(EMFILE),
    E(EPIPE),        E(ENOTSOCK),      E(EMSGSIZE),     E(EPROTOTYPE),
    E(EAFNOSUPPORT), E(EADDRINUSE),    E(EADDRNOTAVAIL), E(ENETUNREACH),
    E(ECONNABORTED), E(ECONNRESET),    E(ENOBUFS),      E(EISCONN),
    E(ENOTCONN),     E(ESHUTDOWN),     E(ETIMEDOUT),    E(ECONNREFUSED),
    E(EHOSTUNREACH), E(EALREADY),      E(EINPROGRESS),  E(ECANCELED),
    E(ESRCH),        E(ECHILD),        E(ENOSPC),       E(ERANGE),
};
#undef E
#define N_ERRNO_CODES (sizeof errno_codes / sizeof errno_codes[0])

Test(errors, econnreset_name_and_text, .timeout = 10)
{
    cr_assert_str_eq(tpio_err_name(-ECONNRESET), "ECONNRESET");
    cr_assert_str_eq(tpio_strerror(-ECONNRESET), strerror(ECONNRESET));
}

Test(errors, errno_codes_names_and_texts, .timeout = 10)
{
    for (size_t i = 0; i < N_ERRNO_CODES; i++) {
        int code = -errno_codes[i].value;
        const char *name = tpio_err_name(code);
        const char *text = tpio_strerror(code);
        cr_assert_not_null(name, "tpio_err_name(%d) is NULL", code);
        cr_assert_not_null(text, "tpio_strerror(%d) is NULL", code);
        cr_assert_str_eq(name, errno_codes[i].name, "tpio_err_name(-%s)",
                         errno_codes[i].name);
        cr_assert_str_eq(text, strerror(errno_codes[i].value),
                         "tpio_strerror(-%s)", errno_codes[i].name);
    }
}

Test(errors, enotsup_has_a_name, .timeout = 10)
{
    /* ENOTSUP and EOPNOTSUPP are the same value on Linux: either name is right. */
    const char *name = tpio_err_name(-ENOTSUP);
    cr_assert_not_null(name);
    cr_assert(strcmp(name, "ENOTSUP") == 0 || strcmp(name, "EOPNOTSUPP") == 0,
              "tpio_err_name(-ENOTSUP) = \"%s\"", name);
    cr_assert_str_eq(tpio_strerror(-ENOTSUP), strerror(ENOTSUP));
}

Test(errors, every_tpio_code_name_and_text, .timeout = 10)
{
    cr_assert_gt(N_TPIO_CODES, 0);
    for (size_t i = 0; i < N_TPIO_CODES; i++) {
        int code = tpio_codes[i].value;
        cr_assert_lt(code, -3000, "%s = %d is not far below errno values",
                     tpio_codes[i].name, code);
        const char *name = tpio_err_name(code);
        const char *text = tpio_strerror(code);
        cr_assert_not_null(name, "tpio_err_name(%s) is NULL", tpio_codes[i].name);
        cr_assert_not_null(text, "tpio_strerror(%s) is NULL", tpio_codes[i].name);
        cr_assert_str_eq(name, tpio_codes[i].name);
        cr_assert_str_eq(text, tpio_codes[i].text, "tpio_strerror(%s)",
                         tpio_codes[i].name);
        /* codes are distinct */
        for (size_t j = 0; j < i; j++)
            cr_assert_neq(tpio_codes[j].value, code);
    }
}

Test(errors, enum_matches_table, .timeout = 10)
{
    cr_assert_eq(TPIO_EAI_NONAME, -3001);
    cr_assert_eq(TPIO_EAI_AGAIN, -3002);
    cr_assert_eq(TPIO_EAI_FAIL, -3003);
    cr_assert_eq(TPIO_EAI_FAMILY, -3004);
    cr_assert_eq(TPIO_EAI_NODATA, -3005);
    cr_assert_eq(TPIO_EAI_SERVICE, -3006);
    cr_assert_eq(TPIO_EAI_MEMORY, -3007);
    cr_assert_eq(TPIO_EAI_OTHER, -3008);
    cr_assert_eq(TPIO_EPROTOCOL_BUFFER, -3101);
    cr_assert_eq(TPIO_ENOTWATCHABLE, -3102);
    cr_assert_str_eq(tpio_err_name(TPIO_ENOTWATCHABLE), "TPIO_ENOTWATCHABLE");
    cr_assert_str_eq(tpio_err_name(TPIO_EAI_NONAME), "TPIO_EAI_NONAME");
    cr_assert_str_eq(tpio_err_name(TPIO_EPROTOCOL_BUFFER), "TPIO_EPROTOCOL_BUFFER");
    cr_assert_str_eq(tpio_strerror(TPIO_EPROTOCOL_BUFFER),
                     "get_buffer() returned an empty buffer");
}

Test(errors, zero_is_described, .timeout = 10)
{
    const char *name = tpio_err_name(0);
    const char *text = tpio_strerror(0);
    cr_assert_not_null(name);
    cr_assert_not_null(text);
    cr_assert_gt(strlen(name), 0);
    cr_assert_gt(strlen(text), 0);
    /* 0 is success: it must not be described as any error */
    for (size_t i = 0; i < N_TPIO_CODES; i++)
        cr_assert_str_neq(name, tpio_codes[i].name);
    for (size_t i = 0; i < N_ERRNO_CODES; i++)
        cr_assert_str_neq(name, errno_codes[i].name);
}

static void check_unknown(int code)
{
    const char *name = tpio_err_name(code);
    const char *text = tpio_strerror(code);
    cr_assert_not_null(name, "tpio_err_name(%d) is NULL", code);
    cr_assert_not_null(text, "tpio_strerror(%d) is NULL", code);
    cr_assert_gt(strlen(name), 0, "tpio_err_name(%d) is empty", code);
    cr_assert_gt(strlen(text), 0, "tpio_strerror(%d) is empty", code);
    for (size_t i = 0; i < N_TPIO_CODES; i++) {
        cr_assert_str_neq(name, tpio_codes[i].name, "unknown %d named %s", code, name);
        cr_assert_str_neq(text, tpio_codes[i].text, "unknown %d described as %s",
                          code, text);
    }
    for (size_t i = 0; i < N_ERRNO_CODES; i++)
        cr_assert_str_neq(name, errno_codes[i].name, "unknown %d named %s", code, name);
}

Test(errors, unknown_codes_never_null, .timeout = 10)
{
    static const int unknown[] = {
        -3000, -3009, -3050, -3100, -3199, -3200, -4000, -9999, -123456,
        -1000000, INT_MIN, INT_MIN + 1, INT_MAX, 99999,
    };
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        check_unknown(unknown[i]);
    /* and again: any static formatting buffer must stay sane */
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        check_unknown(unknown[i]);
}

Test(errors, strings_are_stable, .timeout = 10)
{
    /* asking again gives the same text (no clobbering by other calls) */
    const char *a = tpio_err_name(-EPIPE);
    (void)tpio_err_name(TPIO_EAI_AGAIN);
    (void)tpio_strerror(-123456);
    cr_assert_str_eq(a, "EPIPE");
    const char *t = tpio_strerror(TPIO_EAI_AGAIN);
    (void)tpio_strerror(-EINVAL);
    cr_assert_str_eq(t, "temporary failure in name resolution");
}
