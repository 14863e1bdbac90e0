/* hostos.c — FreeBSD: the death signal (procctl), CPU pinning (cpuset), a unix socket
 * peer's uid (getpeereid) and whether a pid runs (sysctl kern.proc.pid); errno or 0. */
#include <errno.h>
#include <unistd.h>
#include <sys/param.h>
#include <sys/types.h>
#include <sys/cpuset.h>
#include <sys/procctl.h>
#include <sys/sysctl.h>
#include <sys/user.h>
#include <sys/wait.h>
#include "hostos.h"

/* signal `sig` when the parent process exits (PR_SET_PDEATHSIG on Linux) */
int vp_die_with_parent(int sig) {
    return procctl(P_PID, 0, PROC_PDEATHSIG_CTL, &sig) ? errno : 0;
}

/* this process on exactly these CPUs */
int vp_set_cpus(const int *cpus, int n) {
    cpuset_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < n; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) return EINVAL;
        CPU_SET(cpus[i], &set);
    }
    return cpuset_setaffinity(CPU_LEVEL_WHICH, CPU_WHICH_PID, -1, sizeof set, &set) ? errno : 0;
}

int vp_peer_uid(int fd, uint32_t *uid) {
    uid_t u;
    gid_t g;
    if (getpeereid(fd, &u, &g)) return errno;
    *uid = (uint32_t)u;
    return 0;
}

/* 1: pid exists and is not a zombie; 0: gone or a zombie; -1: cannot tell */
int vp_pid_running(int pid) {
    int mib[4] = {CTL_KERN, KERN_PROC, KERN_PROC_PID, pid};
    struct kinfo_proc kp;
    size_t len = sizeof kp;
    if (pid <= 0) return 0;
    if (sysctl(mib, 4, &kp, &len, NULL, 0) != 0) return errno == ESRCH ? 0 : -1;
    if (len < sizeof kp) return 0;          /* no such process: nothing returned */
    return kp.ki_stat != SZOMB;
}
