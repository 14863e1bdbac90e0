"""QEMU guests for tests and benchmarks: Debian's kernel and a busybox initramfs, built
from Debian packages on first use and cached (/var/cache/valepipe-vm), booted under TCG
with a virtio-net NIC on a TAP; commands run in them over their serial console.

Nothing is committed: `image()` fetches linux-image-amd64's kernel with `apt-get
download`, takes busybox-static's /bin/busybox, and writes the initramfs itself.
"""
import fcntl
import os
import re
import select
import shutil
import socket
import stat
import subprocess
import tempfile
import time

CACHE = os.environ.get("VALEPIPE_VM_CACHE", "/var/cache/valepipe-vm")
# virtio-net and what it needs, in load order (Debian builds them as modules)
MODULES = ["kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
           "kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
           "kernel/drivers/virtio/virtio_pci.ko", "kernel/net/core/failover.ko",
           "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko"]
INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs -o size=200m tmp /tmp
for m in MODULES; do insmod /lib/modules/$m || echo "VP-MODULE-FAILED $m"; done
ip=$(sed -n 's/.*vp\.ip=\([^ ]*\).*/\1/p' /proc/cmdline)
ip link set lo up
ip addr add "$ip" dev eth0
ip link set eth0 up
export PATH=/bin
stty -echo
echo VP-GUEST-READY
# not an interactive shell: no prompt, no line editing; the console carries commands only
while read -r line; do eval "$line"; done
"""


class GuestError(Exception):
    """A guest could not be built, booted or driven; the message says what happened."""


def _newc(entries):
    """An uncompressed cpio (newc) archive: [(name, mode, data or symlink target)]."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
        nm = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nm), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + nm
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _kernel_package():
    for attempt in range(2):
        r = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True)
        m = re.search(r"Depends: (linux-image-[0-9][^\s]*-amd64)\b", r.stdout)
        if m:
            return m.group(1)
        if attempt == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    raise GuestError("cannot find Debian's linux-image-amd64 kernel package (apt-get update, and a Debian "
                     "package mirror, are needed to build the guests' image)")


def image():
    """(kernel, initramfs) paths, built once per kernel version and kept in CACHE."""
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # one build, whoever else boots guests now
        pkg = _kernel_package()
        d = os.path.join(CACHE, pkg)
        kernel, initrd = os.path.join(d, "vmlinuz"), os.path.join(d, "initrd.cpio")
        if os.path.exists(kernel) and os.path.exists(initrd):
            return kernel, initrd
        busybox = shutil.which("busybox") or "/bin/busybox"
        if not os.path.exists(busybox) or not _static(busybox):
            raise GuestError("no static busybox (apt-get install busybox-static)")
        work = tempfile.mkdtemp(dir=CACHE, prefix="build-")
        try:
            r = subprocess.run(["apt-get", "download", pkg], cwd=work, capture_output=True, text=True)
            debs = [f for f in os.listdir(work) if f.endswith(".deb")]
            if r.returncode or not debs:
                raise GuestError(f"apt-get download {pkg} failed: {r.stderr.strip()[-300:]}")
            x = os.path.join(work, "x")
            subprocess.run(["dpkg-deb", "-x", os.path.join(work, debs[0]), x], check=True)
            vmlinuz = [f for f in os.listdir(os.path.join(x, "boot")) if f.startswith("vmlinuz-")][0]
            moddir = os.path.join(x, "lib", "modules", vmlinuz[len("vmlinuz-"):])
            entries = [(p, stat.S_IFDIR | 0o755, b"") for p in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules")]
            entries.append(("bin/busybox", stat.S_IFREG | 0o755, open(busybox, "rb").read()))
            entries.append(("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
            names = []
            for m in MODULES:
                names.append(os.path.basename(m))
                entries.append((f"lib/modules/{names[-1]}", stat.S_IFREG | 0o644, open(os.path.join(moddir, m), "rb").read()))
            entries.append(("init", stat.S_IFREG | 0o755, INIT.replace("MODULES", " ".join(names)).encode()))
            os.makedirs(d, exist_ok=True)
            shutil.copy(os.path.join(x, "boot", vmlinuz), kernel + ".tmp")
            with open(initrd + ".tmp", "wb") as f:
                f.write(_newc(entries))
            os.rename(kernel + ".tmp", kernel)
            os.rename(initrd + ".tmp", initrd)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return kernel, initrd


def _static(path):
    """A static binary names no dynamic loader (it has no PT_INTERP)."""
    with open(path, "rb") as f:
        return b"/lib64/ld-linux" not in f.read(4096)


class Guest:
    """One QEMU guest (TCG, 1 vCPU) whose NIC is `netdev` (QEMU -netdev text), its address
    `ip` (with prefix); started in network namespace `netns` so its TAP is made there."""

    def __init__(self, name, netdev, ip, netns=None, mac="52:54:00:00:00:01", mem=256, pass_fds=(), workdir=None):
        kernel, initrd = image()
        self.name = name
        self.dir = tempfile.mkdtemp(prefix=f"valepipe-{name}-", dir=workdir)
        self.console_path = os.path.join(self.dir, "console.sock")
        accel = os.environ.get("VALEPIPE_VM_ACCEL", "tcg")
        cmd = ([] if not netns else ["ip", "netns", "exec", netns]) + [
            "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-accel", accel, "-m", str(mem), "-smp", "1",
            "-kernel", kernel, "-initrd", initrd,
            "-append", f"console=ttyS0 quiet loglevel=1 panic=-1 ipv6.disable=1 vp.ip={ip}",
            "-serial", f"unix:{self.console_path},server=on,wait=on",
            "-netdev", netdev, "-device", f"virtio-net-pci,netdev=n0,mac={mac}"]
        self.log = open(os.path.join(self.dir, "qemu.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, pass_fds=pass_fds,
                                     start_new_session=True)
        self.buf = b""
        self.seq = 0
        self.sock = None
        deadline = time.monotonic() + 30
        while self.sock is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise GuestError(f"guest {name}: QEMU did not start: {self._qemu_log()}")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.console_path)
                self.sock = s
            except OSError:
                s.close()
                time.sleep(0.05)

    def _qemu_log(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()[-600:]

    def _read(self, timeout):
        if select.select([self.sock], [], [], timeout)[0]:
            data = self.sock.recv(65536)
            if not data:
                raise GuestError(f"guest {self.name}: console closed; QEMU: {self._qemu_log()}")
            self.buf += data

    def expect(self, pattern, timeout):
        """Wait for regex `pattern` in the console output; returns the match (output before
        it is consumed)."""
        rx = re.compile(pattern.encode())
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise GuestError(f"guest {self.name}: no {pattern!r} within {timeout}s; console tail: "
                                 f"{self.buf[-400:].decode(errors='replace')!r}; QEMU: {self._qemu_log()}")
            self._read(min(left, 0.5))

    def wait_ready(self, timeout=180):
        self.expect("VP-GUEST-READY", timeout)

    def send(self, cmd):
        """Start `cmd`; returns a token for `result`."""
        self.seq += 1
        self.sock.sendall(f"{cmd}; echo VP-END-{self.seq}-$?\n".encode())
        return self.seq

    def result(self, token, timeout=60):
        """(exit status, output) of a command started with send()."""
        rx = re.compile(rf"VP-END-{token}-(\d+)".encode())
        deadline = time.monotonic() + timeout
        while not (m := rx.search(self.buf)):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise GuestError(f"guest {self.name}: command {token} unfinished after {timeout}s; console tail: "
                                 f"{self.buf[-400:].decode(errors='replace')!r}")
            self._read(min(left, 0.5))
        out = self.buf[:m.start()].decode(errors="replace")
        self.buf = self.buf[m.end():]
        return int(m.group(1)), out.replace("\r", "").strip()

    def run(self, cmd, timeout=60):
        return self.result(self.send(cmd), timeout)

    def check(self, cmd, timeout=60):
        rc, out = self.run(cmd, timeout)
        if rc:
            raise GuestError(f"guest {self.name}: {cmd!r} exited {rc}: {out[-400:]}")
        return out

    def counters(self):
        out = self.check("cat /sys/class/net/eth0/statistics/rx_packets /sys/class/net/eth0/statistics/tx_packets")
        rx, tx = [int(v) for v in out.split()[-2:]]
        return {"rx_packets": rx, "tx_packets": tx}

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.sock:
            self.sock.close()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def main(argv=None):
    """`python -m tools.guest [--ip ADDR/PREFIX] [--tap NAME] [--mac MAC]`: build (or find in
    the cache) the kernel and initramfs, print their paths and the QEMU command line that
    boots a guest on TAP NAME (what the README's `qemu-system-x86_64 ...` stands for)."""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m tools.guest", description=main.__doc__.split(": ", 1)[1])
    ap.add_argument("--ip", default="10.0.0.1/24", help="the guest's eth0 address (vp.ip= on its kernel command line)")
    ap.add_argument("--tap", default="vm1", help="the TAP QEMU opens (-netdev tap,ifname=)")
    ap.add_argument("--mac", default="52:54:00:00:00:01", help="the guest NIC's MAC (each guest its own)")
    a = ap.parse_args(argv)
    try:
        kernel, initrd = image()
    except (GuestError, OSError) as e:
        raise SystemExit(f"python -m tools.guest: {e}") from None
    print(f"kernel:    {kernel}\ninitramfs: {initrd}")
    print("# the console (-serial stdio) runs each line it reads as a shell command: no prompt, no echo;\n"
          "# the guest prints VP-GUEST-READY once eth0 is up (-accel tcg where KVM does not work)")
    print(f"qemu-system-x86_64 -nodefaults -no-user-config -display none -accel tcg -m 256 -smp 1 \\\n"
          f"    -kernel {kernel} -initrd {initrd} \\\n"
          f"    -append 'console=ttyS0 quiet panic=-1 vp.ip={a.ip}' -serial stdio \\\n"
          f"    -netdev tap,id=n0,ifname={a.tap},script=no,downscript=no \\\n"
          f"    -device virtio-net-pci,netdev=n0,mac={a.mac}")


if __name__ == "__main__":
    main()
