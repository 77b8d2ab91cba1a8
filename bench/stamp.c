/* bench/stamp.c: the child every supervisor runs in the benchmark.
 *
 * Its first act after exec is to read CLOCK_MONOTONIC; it then sends
 * "<name> <pid> <ns>" as one datagram to the harness's abstract unix socket
 * (named by $BENCH_SOCK, default "supbench"), closes it and sleeps until it
 * is killed, like `sleep infinity`. The name is argv[1], or else the base
 * name of the working directory (runit and s6 run ./run in the service dir).
 * Static, no stdio: nothing runs between the exec and the clock read but the
 * kernel's exec and the static start-up code (a few microseconds).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static char *fmt_u(char *p, unsigned long long v) {
    char tmp[24];
    int n = 0;
    do { tmp[n++] = '0' + v % 10; v /= 10; } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned long long ns = (unsigned long long)ts.tv_sec * 1000000000ull + ts.tv_nsec;

    char cwd[4096];
    const char *name = argc > 1 ? argv[1] : NULL;
    if (!name) {
        if (getcwd(cwd, sizeof cwd)) {
            char *slash = strrchr(cwd, '/');
            name = slash ? slash + 1 : cwd;
        } else {
            name = "?";
        }
    }
    char msg[512];
    char *p = msg;
    size_t nl = strlen(name);
    if (nl > 400) nl = 400;
    memcpy(p, name, nl); p += nl;
    *p++ = ' ';
    p = fmt_u(p, (unsigned long long)getpid());
    *p++ = ' ';
    p = fmt_u(p, ns);
    *p++ = '\n';

    const char *sock = getenv("BENCH_SOCK");
    if (!sock) sock = "supbench";
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t sl = strlen(sock);
    if (sl > sizeof addr.sun_path - 2) sl = sizeof addr.sun_path - 2;
    memcpy(addr.sun_path + 1, sock, sl); /* abstract: leading NUL */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        sendto(fd, msg, p - msg, 0, (struct sockaddr *)&addr,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + sl));
        close(fd);
    }
    for (;;) pause();
}
