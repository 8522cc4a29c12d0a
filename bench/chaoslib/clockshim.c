/* Loaded ahead of libfaketime in the chaos harness (bench/chaoslib/clocks.py).
 *
 * libfaketime 0.9.10 (Debian's) mishandles clock_nanosleep(CLOCK_MONOTONIC,
 * TIMER_ABSTIME) when FAKETIME_DONT_FAKE_MONOTONIC=1: it shifts the deadline by the
 * wall-clock offset and the kernel answers EINVAL, which is every time.sleep() and
 * subprocess wait(timeout) of Python 3.11 (wolfcw/libfaketime issue 426). The harness
 * fakes the wall clock only, so a monotonic sleep has nothing to translate: this goes
 * straight to the kernel. A CLOCK_REALTIME absolute sleep also goes straight through,
 * so it sleeps by the real wall clock; nothing in Shoal sleeps that way.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int clock_nanosleep(clockid_t clock, int flags, const struct timespec *req,
                    struct timespec *rem) {
    /* the libc call returns the error number instead of setting errno */
    long r = syscall(SYS_clock_nanosleep, clock, flags, req, rem);
    return r == -1 ? errno : 0;
}
