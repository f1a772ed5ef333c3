/* Starting a child process, posix_spawn style: clone(CLONE_VM | CLONE_VFORK)
 * runs the child on a small stack of its own, in the parent's memory, with
 * the parent thread suspended until the child has called execve() or died.
 * No page tables are copied (fork() would copy the whole address space of a
 * big process), and because the memory is shared the child reports an exec
 * failure by storing errno where the parent reads it when clone() returns:
 * the call fails with -ENOENT / -EACCES, no child ever "exits 127".
 *
 * Sharing memory means the child must not touch anything of the parent's
 * state: it makes system calls only (raw syscall(), plus sigaction, which is
 * async-signal-safe), is built without AddressSanitizer (it would poison
 * shadow memory shared with the parent for a stack about to vanish), and
 * every string it needs is prepared by the parent. */
#include "base/base.h"

#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
/* waitid's P_PIDFD (Linux 5.4); an enumerator glibc only names since 2.35. */
#define PIDFD_IDTYPE ((idtype_t)3)

#define CHILD_STACK (128 * 1024)
#define NOSAN __attribute__((no_sanitize("address", "undefined"), noinline))

extern char **environ;

/* Everything the child reads, prepared by the parent; `err` is the one
 * thing it writes. */
struct child {
    char *const *argv, *const *envp;
    const char *cwd;
    const char *path; /* PATH to search, NULL when argv[0] contains a '/' */
    size_t flen;      /* strlen(argv[0]) */
    long maxfd;       /* bound of the last-resort close loop */
    int fds[3];
    const int *keep;  /* sorted, no duplicates */
    size_t nkeep;
    bool setsid, setpgid;
    pid_t pgid;
    int err;
};

struct kdirent64 { /* what getdents64 returns */
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

NOSAN __attribute__((noreturn)) static void child_fail(struct child *c, int err)
{
    c->err = err ? err : EINVAL;
    for (;;)
        syscall(SYS_exit_group, 127);
}

/* Is fd one of the descriptors to pass? (binary search: keep is sorted) */
NOSAN static bool kept(const struct child *c, long fd)
{
    size_t lo = 0, hi = c->nkeep;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->keep[mid] == fd)
            return true;
        if (c->keep[mid] < fd)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* Close every descriptor from 3 up, except those to pass: one close_range
 * per gap between them. -1 if the kernel has no close_range (it fails on the
 * first call, before anything was closed). */
NOSAN static int close_fds(const struct child *c)
{
    unsigned lo = 3;
    for (size_t i = 0; i < c->nkeep; i++) {
        unsigned k = (unsigned)c->keep[i];
        if (k < lo)
            continue; /* 0, 1, 2: the stdio set-up's */
        if (k > lo && syscall(SYS_close_range, lo, k - 1, 0) < 0)
            return -1;
        lo = k + 1;
    }
    return syscall(SYS_close_range, lo, ~0U, 0) < 0 ? -1 : 0;
}

/* Kernels before 5.9 have no close_range: walk /proc/self/fd (closing while
 * reading is fine, the directory is ordered by descriptor number), or,
 * without /proc, close every number up to the limit. */
NOSAN static void close_fds_slow(const struct child *c)
{
    int dfd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/fd",
                           O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        for (long fd = 3; fd < c->maxfd; fd++)
            if (!kept(c, fd))
                syscall(SYS_close, fd);
        return;
    }
    char buf[2048] __attribute__((aligned(8)));
    long n;
    while ((n = syscall(SYS_getdents64, dfd, buf, sizeof buf)) > 0) {
        for (long off = 0; off < n;) {
            struct kdirent64 *d = (struct kdirent64 *)(void *)(buf + off);
            off += d->d_reclen;
            const char *p = d->d_name;
            long fd = 0;
            if (*p < '0' || *p > '9')
                continue;
            while (*p >= '0' && *p <= '9')
                fd = fd * 10 + (*p++ - '0');
            if (fd >= 3 && fd != dfd && !kept(c, fd))
                syscall(SYS_close, fd);
        }
    }
    syscall(SYS_close, dfd);
}

NOSAN static void child_exec(struct child *c)
{
    const char *file = c->argv[0];
    if (!c->path) {
        syscall(SYS_execve, file, c->argv, c->envp);
        child_fail(c, errno);
    }
    /* execvp's search: go on after ENOENT/ENOTDIR (and EACCES, which wins
     * if nothing else runs), stop at any other error. */
    char buf[PATH_MAX];
    int err = ENOENT;
    bool eacces = false;
    for (const char *p = c->path;; p++) {
        const char *e = p;
        while (*e && *e != ':')
            e++;
        size_t dlen = (size_t)(e - p), k = 0;
        if (dlen + 1 + c->flen < sizeof buf) {
            for (size_t i = 0; i < dlen; i++)
                buf[k++] = p[i];
            if (dlen) /* an empty entry is the current directory */
                buf[k++] = '/';
            for (size_t i = 0; i <= c->flen; i++)
                buf[k++] = file[i];
            syscall(SYS_execve, buf, c->argv, c->envp);
            err = errno;
            if (err == EACCES)
                eacces = true;
            else if (err != ENOENT && err != ENOTDIR && err != ESTALE && err != ENODEV &&
                     err != ETIMEDOUT)
                break;
        }
        p = e;
        if (!*p)
            break;
    }
    child_fail(c, eacces ? EACCES : err);
}

NOSAN static int child_main(void *arg)
{
    struct child *c = arg;

    /* Handlers are the parent's code on the parent's memory: back to
     * SIG_DFL before anything is unblocked. SIGPIPE too, as Python's
     * restore_signals: tpio ignores it for its write pipes, children expect
     * the default. Ignored signals stay ignored (nohup works). */
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction sa = {0};
        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &sa) < 0)
            continue;
        if (sig == SIGPIPE || (sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN)) {
            sa.sa_handler = SIG_DFL;
            sa.sa_flags = 0;
            sigaction(sig, &sa, NULL);
        }
    }
    /* Nothing blocked, as libuv: a parent that blocks SIGTERM for sigwait()
     * must still be able to terminate() its children. */
    uint64_t none[(NSIG - 1) / 64 + 1] = {0};
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, none, NULL, (NSIG - 1) / 8);

    /* The descriptors to pass lose CLOEXEC first, as Popen's
     * make_inheritable: one of 0, 1, 2 is then replaced by the stdio set-up
     * below if it has a source (stdio decides), kept open if inherited. */
    for (size_t i = 0; i < c->nkeep; i++)
        if (syscall(SYS_fcntl, c->keep[i], F_SETFD, 0) < 0)
            child_fail(c, errno);

    /* Put the sources on 0, 1, 2. A source that is itself 0..2 but meant
     * for another slot would be overwritten by an earlier dup: move it
     * above 2 first. A source already in its slot only loses CLOEXEC. */
    int fd[3] = {c->fds[0], c->fds[1], c->fds[2]};
    for (int i = 0; i < 3; i++) {
        if (fd[i] >= 0 && fd[i] < 3 && fd[i] != i) {
            long r = syscall(SYS_fcntl, fd[i], F_DUPFD_CLOEXEC, 3);
            if (r < 0)
                child_fail(c, errno);
            fd[i] = (int)r;
        }
    }
    for (int i = 0; i < 3; i++) {
        if (fd[i] < 0)
            continue; /* inherited as it is */
        long r = fd[i] == i ? syscall(SYS_fcntl, i, F_SETFD, 0)
                            : syscall(SYS_dup3, fd[i], i, 0);
        if (r < 0)
            child_fail(c, errno);
    }
    /* Nothing else leaks into the child, CLOEXEC or not. */
    if (close_fds(c) < 0)
        close_fds_slow(c);

    /* Popen's order: directory, then session, then group (after setsid the
     * child leads its session, and setpgid fails with EPERM: as Popen). */
    if (c->cwd && syscall(SYS_chdir, c->cwd) < 0)
        child_fail(c, errno);
    if (c->setsid && syscall(SYS_setsid) < 0)
        child_fail(c, errno);
    if (c->setpgid && syscall(SYS_setpgid, 0, c->pgid) < 0)
        child_fail(c, errno);
    child_exec(c);
    return 127;
}

/* PATH as execvp sees it, but from the child's environment (Python's
 * os.get_exec_path(env)). */
static const char *search_path(char *const *envp)
{
    for (char *const *e = envp; e && *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            return *e + 5;
    return "/bin:/usr/bin";
}

static int cmp_fd(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* The descriptors to pass, sorted and without duplicates, for the child's
 * binary search and its close_range gaps (it cannot allocate). */
static int *sorted_keep(const int *keep, size_t n, size_t *out_n)
{
    int *v = tpio__malloc(n * sizeof *v);
    if (!v)
        return NULL;
    memcpy(v, keep, n * sizeof *v);
    qsort(v, n, sizeof *v, cmp_fd);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (k == 0 || v[i] != v[k - 1])
            v[k++] = v[i];
    *out_n = k;
    return v;
}

int tpio__spawn(struct tpio__spawn *s)
{
    struct child c = {
        .argv = (char *const *)s->argv,
        .envp = s->envp ? (char *const *)s->envp : environ,
        .cwd = s->cwd,
        .flen = strlen(s->argv[0]),
        .fds = {s->fds[0], s->fds[1], s->fds[2]},
        .setsid = s->setsid,
        .setpgid = s->setpgid,
        .pgid = s->pgid,
    };
    if (c.flen == 0)
        return -ENOENT; /* as execvp */
    for (size_t i = 0; i < s->nkeep; i++)
        if (s->keep[i] < 0)
            return -EBADF;
    int *keep = NULL;
    if (s->nkeep) {
        keep = sorted_keep(s->keep, s->nkeep, &c.nkeep);
        if (!keep)
            return -ENOMEM;
        c.keep = keep;
    }
    if (!strchr(s->argv[0], '/'))
        c.path = search_path(c.envp);
    c.maxfd = sysconf(_SC_OPEN_MAX);
    if (c.maxfd < 0)
        c.maxfd = 1024;

    void *stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        int err = errno;
        tpio__free(keep);
        return -err;
    }
    /* A signal handler must never run in the child (it would run on our
     * memory): block everything until the child has reset the handlers. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    /* CLONE_PIDFD: the pidfd comes with the child, so no failure can leave
     * a child we cannot watch. */
    int pidfd = -1;
    pid_t pid = clone(child_main, (char *)stack + CHILD_STACK,
                      CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &c, &pidfd);
    int clone_err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    munmap(stack, CHILD_STACK); /* the child has exec'd or exited */
    tpio__free(keep);
    if (pid < 0)
        return -clone_err;
    if (c.err) {
        tpio__reap(pidfd, false, NULL);
        close(pidfd);
        return -c.err;
    }
    s->pid = pid;
    s->pidfd = pidfd;
    return 0;
}

int tpio__reap(int pidfd, bool nohang, int *code)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int r;
    do
        r = waitid(PIDFD_IDTYPE, (id_t)pidfd, &si, WEXITED | (nohang ? WNOHANG : 0));
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return -errno;
    if (si.si_pid == 0)
        return 0; /* still running */
    if (code)
        *code = si.si_code == CLD_EXITED ? si.si_status : -si.si_status;
    return 1;
}
