/* hostos.h — FreeBSD's calls for what Linux does with prctl(PR_SET_PDEATHSIG),
 * sched_setaffinity, SO_PEERCRED and /proc/PID/stat; pipeline/hostos.py uses them there.
 * Built only for FreeBSD (pipeline/native_build.py). */
#ifndef VP_HOSTOS_H
#define VP_HOSTOS_H
#include <stdint.h>
/* cdef-begin */
int vp_die_with_parent(int sig);
int vp_set_cpus(const int *cpus, int n);
int vp_peer_uid(int fd, uint32_t *uid);
int vp_pid_running(int pid);
/* cdef-end */
#endif
