/* netns.h — Linux's network namespaces: setns(2), to open a port inside one (@netns=NS).
 * Built only for Linux (FreeBSD has no setns: jails and VNET instead). */
#ifndef VP_NETNS_H
#define VP_NETNS_H
/* cdef-begin */
#define CLONE_NEWNET 0x40000000
int setns(int fd, int nstype);
/* cdef-end */
#endif
