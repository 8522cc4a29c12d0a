/*
 * LD_PRELOAD shim that lets Debian 12's user-mode-linux (6.1) run on hosts whose XSAVE
 * area is larger than UML's buffer for it (AVX-512 and AMX hosts: 11,008 bytes here).
 *
 * Why: UML keeps each guest thread's FPU state in a fixed 832-byte buffer (legacy area,
 * XSAVE header, AVX) and moves it with PTRACE_GETREGSET / PTRACE_SETREGSET NT_X86_XSTATE.
 * A short GETREGSET is fine (the host truncates), but the host refuses a SETREGSET that
 * is not the whole XSAVE area with EFAULT, so UML dies on its first context switch with
 * "userspace - ptrace set fp regs failed, errno = 14". Newer UML kernels size the buffer
 * from the host; Debian 12 ships 6.1.
 *
 * What: for those two requests with a buffer smaller than the host's XSAVE area, keep a
 * full-size side buffer per UML buffer address (one per guest thread), do the full-size
 * call on it and copy the prefix UML knows about in or out. The guest thread therefore
 * keeps its whole register state (AVX-512 and AMX included) across switches, exactly as
 * if UML's buffer were big enough. Everything else goes straight to libc's ptrace.
 *
 * Built by tests/e2e/uml.py into each run's temporary directory; it is test tooling,
 * never part of Shoal itself.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef long (*ptrace_fn)(int, pid_t, void *, void *);

static ptrace_fn real_ptrace;
static size_t host_xstate_size;

/* Open-addressed table: UML buffer address -> full-size XSAVE buffer. UML drives ptrace
 * from one thread, so no locking; a few hundred guest threads at most in tests. */
#define SLOTS 8192
struct slot {
    void *key;
    unsigned char *full;
};
static struct slot slots[SLOTS];

static unsigned char *side_buffer(void *key)
{
    size_t start = ((uintptr_t)key >> 4) % SLOTS;
    for (size_t i = 0; i < SLOTS; i++) {
        struct slot *s = &slots[(start + i) % SLOTS];
        if (s->key == key)
            return s->full;
        if (s->key == NULL) {
            s->full = calloc(1, host_xstate_size);
            if (s->full == NULL)
                return NULL;
            s->key = key;
            return s->full;
        }
    }
    return NULL;
}

long ptrace(enum __ptrace_request request, ...)
{
    va_list ap;
    va_start(ap, request);
    pid_t pid = va_arg(ap, pid_t);
    void *addr = va_arg(ap, void *);
    void *data = va_arg(ap, void *);
    va_end(ap);

    if (real_ptrace == NULL)
        real_ptrace = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
    if ((request != PTRACE_GETREGSET && request != PTRACE_SETREGSET) ||
        (uintptr_t)addr != NT_X86_XSTATE || data == NULL)
        return real_ptrace(request, pid, addr, data);

    struct iovec *iov = data;
    if (host_xstate_size == 0) {
        /* The host reports the size of its XSAVE area by how much a big read fills. */
        static unsigned char probe[1 << 16];
        struct iovec p = {probe, sizeof probe};
        long r = real_ptrace(PTRACE_GETREGSET, pid, addr, &p);
        if (r != 0)
            return r;
        host_xstate_size = p.iov_len;
    }
    if (iov->iov_len >= host_xstate_size)
        return real_ptrace(request, pid, addr, data);

    unsigned char *full = side_buffer(iov->iov_base);
    if (full == NULL) {
        errno = ENOMEM;
        return -1;
    }
    struct iovec whole = {full, host_xstate_size};
    if (request == PTRACE_GETREGSET) {
        long r = real_ptrace(PTRACE_GETREGSET, pid, addr, &whole);
        if (r == 0)
            memcpy(iov->iov_base, full, iov->iov_len);
        return r;
    }
    /* The prefix is UML's (it may have changed it, e.g. for a guest signal frame); the
     * rest is this thread's own state from its last GETREGSET. */
    memcpy(full, iov->iov_base, iov->iov_len);
    return real_ptrace(PTRACE_SETREGSET, pid, addr, &whole);
}
