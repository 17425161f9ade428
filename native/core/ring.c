/*
 * Creating a worker's ring with the features this kernel has, and the
 * probe that finds out which those are. Features are probed by trying
 * them, not by reading the kernel version, so that backports count and a
 * feature switched off at run time takes the same path an old kernel would.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "core/worker.h"

/* Linux 6.12's minimum wait: what this liburing (2.3) and its headers
 * predate. The kernel's struct io_uring_getevents_arg, whose `pad` became
 * min_wait_usec, and the feature bit that says the kernel reads it. */
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15)
#endif
struct ring_getevents_arg {
    uint64_t sigmask;
    uint32_t sigmask_sz;
    uint32_t min_wait_usec;
    uint64_t ts;
};
_Static_assert(sizeof(struct ring_getevents_arg) == 24, "the kernel's io_uring_getevents_arg");

static unsigned setup_flags(uint32_t features)
{
    unsigned f = 0;
    if (features & UP_F_SINGLE_ISSUER)
        f |= IORING_SETUP_SINGLE_ISSUER;
    if ((features & UP_F_DEFER_TASKRUN) && (features & UP_F_SINGLE_ISSUER))
        f |= IORING_SETUP_DEFER_TASKRUN;
    else if (features & UP_F_COOP_TASKRUN)
        f |= IORING_SETUP_COOP_TASKRUN;
    return f;
}

int ring_init(struct worker *w)
{
    struct io_uring_params p = { 0 };
    p.flags = IORING_SETUP_CQSIZE | setup_flags(w->features);
    p.cq_entries = w->o.ring_entries * 4;
    int r = io_uring_queue_init_params(w->o.ring_entries, &w->ring, &p);
    if (r < 0) {
        snprintf(w->err, sizeof w->err,
                 "io_uring_setup failed: %s (is io_uring disabled by "
                 "kernel.io_uring_disabled, seccomp or a container runtime?)",
                 strerror(-r));
        return r;
    }
    if (!(p.features & IORING_FEAT_NODROP)) {
        snprintf(w->err, sizeof w->err,
                 "this kernel's io_uring lacks IORING_FEAT_NODROP (Linux 5.5+)");
        return -ENOSYS;
    }
    if (!(p.features & IORING_FEAT_MIN_TIMEOUT) || !(p.features & IORING_FEAT_EXT_ARG))
        w->features &= ~UP_F_BATCHED_WAIT;
    if ((w->features & UP_F_REGISTERED_RING) && io_uring_register_ring_fd(&w->ring) < 0)
        w->features &= ~UP_F_REGISTERED_RING;
    /* Splice runs on io-wq threads: keep their number bounded and, when
     * asked, on a chosen CPU, so they neither flood the machine nor wander. */
    if (w->o.iowq_max_workers) {
        unsigned vals[2] = { w->o.iowq_max_workers, w->o.iowq_max_workers };
        io_uring_register_iowq_max_workers(&w->ring, vals);
    }
    if (w->o.iowq_cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(w->o.iowq_cpu, &set);
        io_uring_register_iowq_aff(&w->ring, sizeof set, &set);
    }
    return 0;
}

/* The ring's file table: the splice pipes' ends at slots 0..2*pipes-1
 * (pipes_init fills them), then one slot per connection slot, empty until
 * a connection's socket is put there (core/fixed.h). Registered sparse,
 * once: a socket's entry costs no syscall later. A kernel that refuses
 * (RLIMIT_NOFILE below the table's size, say) leaves the sockets out. */
int ring_files_init(struct worker *w)
{
    w->fixed_base = 2 * w->o.pipe_count;
    if ((w->features & UP_F_FIXED_SOCKETS) &&
        io_uring_register_files_sparse(&w->ring, w->fixed_base + w->nconns) < 0)
        w->features &= ~UP_F_FIXED_SOCKETS;
    return 0;
}

struct io_uring_sqe *sqe_get(struct worker *w)
{
    struct io_uring_sqe *s = io_uring_get_sqe(&w->ring);
    if (s)
        return s;
    w->c[UP_C_URING_SQ_FULL]++;
    w->c[UP_C_URING_ENTERS]++;
    int r = io_uring_submit(&w->ring);
    if (r > 0)
        w->c[UP_C_URING_SQES] += (uint64_t)r;
    s = io_uring_get_sqe(&w->ring);
    if (!s) {
        fprintf(stderr, "uproxy: worker %u: submission queue stuck full\n", w->o.index);
        abort();
    }
    return s;
}

/* What liburing's own submit does before it enters: the SQEs taken since
 * the last submission made visible to the kernel. Written out here because
 * liburing 2.3 has no call that submits and passes min_wait_usec, and its
 * flush is internal. The SQ array is filled as older liburings did (slot
 * for slot: the identity map, which newer ones set once at start), so this
 * holds whichever liburing built the ring. */
static unsigned flush_sq(struct io_uring *ring)
{
    struct io_uring_sq *sq = &ring->sq;
    unsigned tail = *sq->ktail;
    while (sq->sqe_head != sq->sqe_tail) {
        sq->array[tail & sq->ring_mask] = sq->sqe_head & sq->ring_mask;
        tail++;
        sq->sqe_head++;
    }
    __atomic_store_n(sq->ktail, tail, __ATOMIC_RELEASE);
    return tail - __atomic_load_n(sq->khead, __ATOMIC_ACQUIRE);
}

int ring_submit_and_wait_batch(struct worker *w, unsigned wait_nr, unsigned min_us,
                               unsigned max_ms)
{
    struct io_uring *ring = &w->ring;
    unsigned submit = flush_sq(ring);
    /* The general timeout only matters when nothing at all completes: the
     * kernel returns once min_us passed if anything is there, and without
     * one it would return empty at min_us (an idle loop spinning). The
     * worker's tick (a timeout SQE) bounds it anyway. */
    struct __kernel_timespec ts = { .tv_sec = max_ms / 1000,
                                    .tv_nsec = (long)(max_ms % 1000) * 1000000L };
    struct ring_getevents_arg arg = { .sigmask = 0, .sigmask_sz = 0,
                                      .min_wait_usec = min_us,
                                      .ts = (uint64_t)(uintptr_t)&ts };
    unsigned flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG;
    int fd = ring->ring_fd;
    if (w->features & UP_F_REGISTERED_RING) {
        flags |= IORING_ENTER_REGISTERED_RING;
        fd = ring->enter_ring_fd;
    }
    long r = syscall(__NR_io_uring_enter, fd, submit, wait_nr, flags, &arg, sizeof arg);
    return r < 0 ? -errno : (int)r;
}

/* ---- probe ------------------------------------------------------------ */

static int try_ring(struct io_uring *ring, unsigned flags)
{
    struct io_uring_params p = { .flags = flags };
    return io_uring_queue_init_params(8, ring, &p);
}

/* The kernel says in the ring's features whether io_uring_enter reads a
 * minimum wait (Linux 6.12); an older one takes the field as padding, so
 * only the feature bit tells. */
static bool probe_min_timeout(void)
{
    struct io_uring ring;
    struct io_uring_params p = { 0 };
    if (io_uring_queue_init_params(8, &ring, &p) < 0)
        return false;
    io_uring_queue_exit(&ring);
    return (p.features & IORING_FEAT_MIN_TIMEOUT) && (p.features & IORING_FEAT_EXT_ARG);
}

/* A file taken out of the table must be let go at once, even while other
 * requests issued before are still pending (a worker always has some: its
 * multishot accepts and receives). Before Linux 6.13 the kernel kept a
 * removed file until every request issued under the table's previous
 * generation had completed, so a closed connection's socket stayed open,
 * its FIN unsent, for as long as any other connection had a receive
 * armed (seen in the project's VM on 6.1). The probe: `wfd` in slot 3, a
 * poll armed on an unrelated pipe through slot 2, slot 3 emptied, our own
 * descriptor closed; the pipe's read end must then see the end of file. */
static bool removed_file_let_go(struct io_uring *ring, int rfd, int wfd)
{
    int other[2];
    if (pipe2(other, O_CLOEXEC | O_NONBLOCK) < 0)
        return false;
    /* The pending request names a file of the table, as a worker's
     * receives do: before 6.13 only those pinned the table's generation. */
    struct io_uring_sqe *s = io_uring_get_sqe(ring);
    io_uring_prep_files_update(s, &other[0], 1, 2);
    s->flags |= IOSQE_CQE_SKIP_SUCCESS;
    s = io_uring_get_sqe(ring);
    io_uring_prep_poll_add(s, 2, POLLIN);                  /* pending: nothing is written */
    s->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(s, 7);
    int none = -1;
    s = io_uring_get_sqe(ring);
    io_uring_prep_files_update(s, &none, 1, 3);
    io_uring_sqe_set_data64(s, 8);
    io_uring_submit(ring);
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts = { .tv_sec = 1 };
    bool updated = false;
    if (io_uring_wait_cqe_timeout(ring, &cqe, &ts) == 0) {
        updated = io_uring_cqe_get_data64(cqe) == 8 && cqe->res == 1;
        io_uring_cqe_seen(ring, cqe);
    }
    close(wfd);
    char c;
    bool ok = updated && read(rfd, &c, 1) == 0;            /* EAGAIN: the table still holds it */
    close(other[1]);                                       /* the poll ends (POLLHUP) */
    if (io_uring_wait_cqe_timeout(ring, &cqe, &ts) == 0)
        io_uring_cqe_seen(ring, cqe);
    close(other[0]);
    return ok;
}

/* A sparse file table (Linux 5.19) filled by an IORING_OP_FILES_UPDATE
 * request that posts no completion when it succeeds (CQE_SKIP_SUCCESS,
 * 5.17), then a write through the fixed slot, then the slot emptied and
 * the file let go at once (6.13): what sockets in the table need
 * (core/fixed.h). */
static bool probe_fixed_sockets(void)
{
    struct io_uring ring;
    struct io_uring_params p = { 0 };
    bool ok = false;
    int pfd[2] = { -1, -1 };
    if (io_uring_queue_init_params(8, &ring, &p) < 0)
        return false;
    if (!(p.features & IORING_FEAT_CQE_SKIP) || io_uring_register_files_sparse(&ring, 4) < 0 ||
        pipe2(pfd, O_CLOEXEC | O_NONBLOCK) < 0)
        goto out;
    struct io_uring_sqe *s = io_uring_get_sqe(&ring);
    io_uring_prep_files_update(s, &pfd[1], 1, 3);
    s->flags |= IOSQE_CQE_SKIP_SUCCESS;
    s = io_uring_get_sqe(&ring);
    io_uring_prep_write(s, 3, "x", 1, 0);
    s->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(s, 42);
    io_uring_submit(&ring);
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts = { .tv_sec = 1 };
    if (io_uring_wait_cqe_timeout(&ring, &cqe, &ts) == 0) {
        char c;
        ok = io_uring_cqe_get_data64(cqe) == 42 && cqe->res == 1 && read(pfd[0], &c, 1) == 1;
        io_uring_cqe_seen(&ring, cqe);
    }
    if (ok) {
        ok = removed_file_let_go(&ring, pfd[0], pfd[1]);
        pfd[1] = -1;                                       /* closed by the check */
    }
out:
    if (pfd[0] >= 0)
        close(pfd[0]);
    if (pfd[1] >= 0)
        close(pfd[1]);
    io_uring_queue_exit(&ring);
    return ok;
}

static int wait_one(struct io_uring *ring, struct io_uring_cqe *out)
{
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts = { .tv_sec = 1 };
    int r = io_uring_wait_cqe_timeout(ring, &cqe, &ts);
    if (r < 0)
        return r;
    *out = *cqe;
    io_uring_cqe_seen(ring, cqe);
    return 0;
}

static bool probe_multishot_accept(struct io_uring *ring)
{
    bool ok = false;
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), c = -1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4) ||
        getsockname(l, (struct sockaddr *)&a, &al))
        goto out;
    struct io_uring_sqe *s = io_uring_get_sqe(ring);
    io_uring_prep_multishot_accept(s, l, NULL, NULL, SOCK_CLOEXEC);
    io_uring_submit(ring);
    c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a))
        goto out;
    struct io_uring_cqe cqe;
    if (wait_one(ring, &cqe) == 0) {
        ok = cqe.res >= 0 && (cqe.flags & IORING_CQE_F_MORE);
        if (cqe.res >= 0)
            close(cqe.res);
    }
out:
    if (c >= 0)
        close(c);
    if (l >= 0)
        close(l);
    return ok;
}

/* A multishot receive whose SQE carries a byte limit (optlen): a kernel
 * that has IORING_RECV_MSHOT_LIM ends it once that many bytes came (no
 * IORING_CQE_F_MORE on that completion); an older one refuses the field
 * (it shares the SQE's union with file_index: EINVAL). limit > 0 asks
 * for the limit, 0 for a plain multishot receive. */
static bool probe_multishot_recv_limit(struct io_uring *ring, unsigned limit)
{
    static char bufs[2][64];
    bool ok = false;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
        return false;
    struct io_uring_cqe cqe;
    struct io_uring_sqe *s = io_uring_get_sqe(ring);
    io_uring_prep_provide_buffers(s, bufs, 64, 2, 7, 0);
    io_uring_submit(ring);
    if (wait_one(ring, &cqe) || cqe.res < 0)
        goto out;
    s = io_uring_get_sqe(ring);
    io_uring_prep_recv(s, sv[0], NULL, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = 7;
    s->ioprio |= IORING_RECV_MULTISHOT;
    s->file_index = limit;          /* optlen: the same union; liburing 2.3 names it so */
    io_uring_submit(ring);
    if (write(sv[1], "xy", 2) != 2)
        goto out;
    if (wait_one(ring, &cqe) == 0)
        ok = cqe.res > 0 && (limit ? !(cqe.flags & IORING_CQE_F_MORE)
                                   : (cqe.flags & IORING_CQE_F_MORE));
out:
    close(sv[0]);
    close(sv[1]);
    return ok;
}

static bool probe_multishot_recv(struct io_uring *ring)
{
    return probe_multishot_recv_limit(ring, 0);
}

/* A ring with these IORING_SETUP_* flags: 0, or -errno. doctor asks once
 * per flag it reports, so its answer does not depend on python-liburing
 * (whose wheel dies with SIGILL on CPUs without AVX-512). */
int up_probe_setup(uint32_t flags)
{
    struct io_uring ring;
    int r = try_ring(&ring, flags);
    if (r == 0)
        io_uring_queue_exit(&ring);
    return r;
}

int up_probe(struct up_probe_result *out)
{
    struct io_uring ring;
    memset(out, 0, sizeof *out);
    int r = try_ring(&ring, 0);
    if (r < 0) {
        out->setup_errno = -r;
        return r;
    }
    struct io_uring_probe *pr = io_uring_get_probe_ring(&ring);
    if (pr) {
        out->nops = pr->last_op + 1u;
        for (unsigned i = 0; i < pr->ops_len && i < 64; i++)
            out->op_supported[i] = (pr->ops[i].flags & IO_URING_OP_SUPPORTED) ? 1 : 0;
        io_uring_free_probe(pr);
    }
    /* Buffer ring registration. */
    size_t bytes = sizeof(struct io_uring_buf) * 8;
    void *br = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br != MAP_FAILED) {
        struct io_uring_buf_reg reg = { .ring_addr = (uint64_t)(uintptr_t)br,
                                        .ring_entries = 8, .bgid = 3 };
        if (io_uring_register_buf_ring(&ring, &reg, 0) == 0) {
            out->features |= UP_F_BUF_RING;
            io_uring_unregister_buf_ring(&ring, 3);
        }
        munmap(br, bytes);
    }
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) == 0) {
        if (io_uring_register_files(&ring, pfd, 2) == 0) {
            out->features |= UP_F_REGISTERED_FILES;
            io_uring_unregister_files(&ring);
        }
        close(pfd[0]);
        close(pfd[1]);
    }
    if (io_uring_register_ring_fd(&ring) == 1)
        out->features |= UP_F_REGISTERED_RING;
    if (probe_multishot_accept(&ring))
        out->features |= UP_F_MULTISHOT_ACCEPT;
    if (probe_multishot_recv(&ring))
        out->features |= UP_F_MULTISHOT_RECV;
    io_uring_queue_exit(&ring);
    /* On a ring of its own: the first probe's buffers and requests are gone. */
    if ((out->features & UP_F_MULTISHOT_RECV) && try_ring(&ring, 0) == 0) {
        if (probe_multishot_recv_limit(&ring, 1))
            out->features |= UP_F_MSHOT_LIMIT;
        io_uring_queue_exit(&ring);
    }

    if (probe_min_timeout())
        out->features |= UP_F_BATCHED_WAIT;
    if (probe_fixed_sockets())
        out->features |= UP_F_FIXED_SOCKETS;

    struct io_uring t;
    if (try_ring(&t, IORING_SETUP_SINGLE_ISSUER) == 0) {
        out->features |= UP_F_SINGLE_ISSUER;
        io_uring_queue_exit(&t);
        if (try_ring(&t, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN) == 0) {
            out->features |= UP_F_DEFER_TASKRUN;
            io_uring_queue_exit(&t);
        }
    }
    if (try_ring(&t, IORING_SETUP_COOP_TASKRUN) == 0) {
        out->features |= UP_F_COOP_TASKRUN;
        io_uring_queue_exit(&t);
    }
    return 0;
}
