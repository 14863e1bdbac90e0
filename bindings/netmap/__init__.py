"""netmap: and vale*: ports (the netmap bindings issue): request structs (nmreq.h), ioctl
numbers per platform (ioctl.py) and port-name parsing as libnetmap does it (names.py).
Opening /dev/netmap and the sync path are not in this build yet."""
