/* A disk that fails to sync, for the fault tests: loaded into casty-host with
 * LD_PRELOAD, it makes fsync and fdatasync fail with EIO while the file named by
 * CASTY_FAIL_FSYNC_FLAG exists, and calls the real ones otherwise. The data written
 * before a failed sync may or may not be on disk, as after a real disk error. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int failing(void) {
    const char *flag = getenv("CASTY_FAIL_FSYNC_FLAG");
    return flag != NULL && access(flag, F_OK) == 0;
}

/* One sync call: failed while the flag exists, passed on to libc's otherwise. */
#define FAILING_SYNC(name)                                                  \
    int name(int fd) {                                                      \
        static int (*real)(int);                                            \
        if (failing()) {                                                    \
            errno = EIO;                                                    \
            return -1;                                                      \
        }                                                                   \
        if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, #name);     \
        return real(fd);                                                    \
    }

FAILING_SYNC(fsync)
FAILING_SYNC(fdatasync)
