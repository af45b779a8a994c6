/*
 * Power-loss shim for the tests (gateway/tests/common/powerloss.rs), never shipped: preloaded
 * (LD_PRELOAD) into a gateway, it logs to TG_PL_LOG what the process makes durable under
 * TG_PL_DIR, so that after a kill -9 the test can take away what a power cut would:
 *
 *   C <seq> <ino> <path>         a new file or directory (open with O_CREAT, mkdir)
 *   L <seq> <ino> <path>         a new name for an existing inode (link, rename)
 *   O <seq> <ino> <size> <path>  an existing file opened (its size before this run's writes)
 *   S <seq> <ino> <size> <path>  fsync/fdatasync of a file: its first <size> bytes are durable
 *   D <seq> <ino> <path>         fsync of a directory: the names in it are durable
 *
 * Each line is one write(2) to a file opened with O_APPEND, so lines from several threads do
 * not interleave, and a kill -9 keeps every line written (they are in the page cache).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static int log_fd = -1;
static char dir[PATH_MAX];
static size_t dir_len;
static atomic_long seq;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static int (*real_openat)(int, const char *, int, ...);

static void init(void) {
    real_openat = dlsym(RTLD_NEXT, "openat");
    const char *d = getenv("TG_PL_DIR");
    const char *l = getenv("TG_PL_LOG");
    if (!d || !l || !realpath(d, dir))
        return;
    dir_len = strlen(dir);
    log_fd = real_openat(AT_FDCWD, l, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

/* Whether `path` (absolute) is under the watched directory. */
static int watched(const char *path) {
    return log_fd >= 0 && strncmp(path, dir, dir_len) == 0 &&
           (path[dir_len] == '/' || path[dir_len] == 0);
}

static int fd_path(int fd, char *out) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, PATH_MAX - 1);
    if (n < 0)
        return -1;
    out[n] = 0;
    return 0;
}

/* The absolute path of `path` relative to `dirfd` (its parent resolved, the last part kept). */
static int abs_path(int dirfd, const char *path, char *out) {
    char base[2 * PATH_MAX + 2];
    if (path[0] == '/') {
        snprintf(base, sizeof base, "%s", path);
    } else if (dirfd == AT_FDCWD) {
        if (!getcwd(out, PATH_MAX))
            return -1;
        snprintf(base, sizeof base, "%s/%s", out, path);
    } else {
        if (fd_path(dirfd, out) < 0)
            return -1;
        snprintf(base, sizeof base, "%s/%s", out, path);
    }
    char *slash = strrchr(base, '/');
    char parent[2 * PATH_MAX + 2];
    snprintf(parent, sizeof parent, "%.*s", (int)(slash - base), base);
    if (!realpath(parent[0] ? parent : "/", out))
        return -1;
    size_t n = strlen(out);
    snprintf(out + n, PATH_MAX - n, "/%s", slash + 1);
    return 0;
}

static void emit(const char *fmt, ...) {
    char line[PATH_MAX + 128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0 && (size_t)n < sizeof line) {
        ssize_t w = write(log_fd, line, (size_t)n);
        (void)w;
    }
}

static long next(void) { return atomic_fetch_add(&seq, 1) + 1; }

/* After a successful open: a created file (C) or an existing one (O). */
static void opened(int fd, int existed) {
    char p[PATH_MAX];
    struct stat st;
    if (fd < 0 || fd_path(fd, p) < 0 || !watched(p) || fstat(fd, &st) < 0)
        return;
    if (!existed)
        emit("C %ld %lu %s\n", next(), (unsigned long)st.st_ino, p);
    else if (S_ISREG(st.st_mode))
        emit("O %ld %lu %lld %s\n", next(), (unsigned long)st.st_ino, (long long)st.st_size, p);
}

static int do_openat(int dirfd, const char *path, int flags, mode_t mode) {
    pthread_once(&once, init);
    int existed = 1;
    if (log_fd >= 0 && (flags & O_CREAT)) {
        struct stat st;
        existed = fstatat(dirfd, path, &st, 0) == 0;
    }
    int fd = real_openat(dirfd, path, flags, mode);
    if (log_fd >= 0) {
        int saved = errno;
        opened(fd, existed);
        errno = saved;
    }
    return fd;
}

#define MODE_ARG(flags)                                                                        \
    mode_t mode = 0;                                                                           \
    if ((flags) & (O_CREAT | O_TMPFILE)) {                                                     \
        va_list ap;                                                                            \
        va_start(ap, flags);                                                                   \
        mode = va_arg(ap, mode_t);                                                             \
        va_end(ap);                                                                            \
    }

int open(const char *path, int flags, ...) {
    MODE_ARG(flags);
    return do_openat(AT_FDCWD, path, flags, mode);
}
int open64(const char *path, int flags, ...) {
    MODE_ARG(flags);
    return do_openat(AT_FDCWD, path, flags, mode);
}
int openat(int dirfd, const char *path, int flags, ...) {
    MODE_ARG(flags);
    return do_openat(dirfd, path, flags, mode);
}
int openat64(int dirfd, const char *path, int flags, ...) {
    MODE_ARG(flags);
    return do_openat(dirfd, path, flags, mode);
}

static void synced(int fd) {
    char p[PATH_MAX];
    struct stat st;
    if (fd_path(fd, p) < 0 || !watched(p) || fstat(fd, &st) < 0)
        return;
    if (S_ISDIR(st.st_mode))
        emit("D %ld %lu %s\n", next(), (unsigned long)st.st_ino, p);
    else
        emit("S %ld %lu %lld %s\n", next(), (unsigned long)st.st_ino, (long long)st.st_size, p);
}

#define SYNC_WRAPPER(name)                                                                     \
    int name(int fd) {                                                                         \
        static int (*real)(int);                                                               \
        pthread_once(&once, init);                                                             \
        if (!real)                                                                             \
            real = dlsym(RTLD_NEXT, #name);                                                    \
        int r = real(fd);                                                                      \
        if (r == 0 && log_fd >= 0) {                                                           \
            int saved = errno;                                                                 \
            synced(fd);                                                                        \
            errno = saved;                                                                     \
        }                                                                                      \
        return r;                                                                              \
    }
SYNC_WRAPPER(fsync)
SYNC_WRAPPER(fdatasync)

/* After a successful link, rename or mkdir: the new name (L, or C for a new directory). */
static void named(char kind, int dirfd, const char *path) {
    char p[PATH_MAX];
    struct stat st;
    if (log_fd < 0 || abs_path(dirfd, path, p) < 0 || !watched(p) || lstat(p, &st) < 0)
        return;
    emit("%c %ld %lu %s\n", kind, next(), (unsigned long)st.st_ino, p);
}

#define NAMING(decl, call, kind, dirfd, path)                                                  \
    int decl {                                                                                 \
        static int (*real)();                                                                  \
        pthread_once(&once, init);                                                             \
        if (!real)                                                                             \
            real = dlsym(RTLD_NEXT, __func__);                                                 \
        int r = real call;                                                                     \
        if (r == 0) {                                                                          \
            int saved = errno;                                                                 \
            named(kind, dirfd, path);                                                          \
            errno = saved;                                                                     \
        }                                                                                      \
        return r;                                                                              \
    }
NAMING(link(const char *a, const char *b), (a, b), 'L', AT_FDCWD, b)
NAMING(linkat(int fa, const char *a, int fb, const char *b, int fl), (fa, a, fb, b, fl), 'L', fb, b)
NAMING(rename(const char *a, const char *b), (a, b), 'L', AT_FDCWD, b)
NAMING(renameat(int fa, const char *a, int fb, const char *b), (fa, a, fb, b), 'L', fb, b)
NAMING(renameat2(int fa, const char *a, int fb, const char *b, unsigned fl), (fa, a, fb, b, fl),
       'L', fb, b)
NAMING(mkdir(const char *p, mode_t m), (p, m), 'C', AT_FDCWD, p)
NAMING(mkdirat(int fd, const char *p, mode_t m), (fd, p, m), 'C', fd, p)
