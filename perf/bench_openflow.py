#!/usr/bin/env python3
"""OpenFlow 1.3 benchmark, valepipe next to Open vSwitch 3.1 in the same run:
flow_mods per second accepted and in effect (`ovs-ofctl add-flows` of N rules over one
connection, which ends with a barrier: its reply means every rule is in), and packet_in ->
packet_out round trips per second (a minimal controller answering each packet-in of a
table-miss rule with a packet-out; frames offered by a shm: peer, a window in flight)."""
import argparse
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pipeline import control  # noqa: E402


def rule(i):
    return (f"table=0,priority=5,tcp,nw_dst=10.{i >> 16}.{(i >> 8) & 255}.{i & 255},tp_dst={1 + i % 60000},"
            "actions=output:2")


def start_pipeline(tmp, tag, extra=""):
    cfg = os.path.join(tmp, f"{tag}.toml")
    with open(cfg, "w") as f:
        f.write(f'[pipeline]\nname = "{tag}"\nupcall_rate = 0\nrun_dir = "{tmp}/{tag}"\n'
                f'[[port]]\nuri = "shm:{tag}a"\n[[port]]\nuri = "shm:{tag}b"\n'
                f'[openflow]\nlisten = "ptcp:0:127.0.0.1"\n{extra}')
    p = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", cfg, "--quiet"], cwd=ROOT,
                         stdout=subprocess.DEVNULL)
    control.wait_ready(os.path.join(tmp, tag, "worker.ctl"), p, timeout=30)
    port = control.request(os.path.join(tmp, tag, "slowpath.ctl"), "stats")["openflow"]["listen_port"]
    return p, port


def stop(p):
    p.terminate()
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()


def add_flows(target, path, env=None):
    t0 = time.perf_counter()
    subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "add-flows", target, path], check=True, env=env,
                   capture_output=True, timeout=3600)
    dt = time.perf_counter() - t0
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-aggregate", target], check=True, env=env,
                         capture_output=True, text=True, timeout=600).stdout
    return dt, int(out.split("flow_count=")[1].split()[0])


def flow_mods(n, tmp):
    from tests.ovs_oracle import OVS
    path = os.path.join(tmp, "rules.flows")
    with open(path, "w") as f:
        f.writelines(rule(i) + "\n" for i in range(n))
    out = {}
    p, port = start_pipeline(tmp, f"ofb{os.getpid()}")
    try:
        out["valepipe"] = add_flows(f"tcp:127.0.0.1:{port}", path)
    finally:
        stop(p)
    ovs = OVS(nports=2)
    try:
        out["ovs"] = add_flows("br0", path, env=ovs.env)
    finally:
        ovs.close()
    return out


def round_trips(seconds, window, tmp):
    """A controller on the listener: every packet-in answered by a packet-out to port 2."""
    from os_ken.ofproto import ofproto_v1_3 as ofp
    from os_ken.ofproto import ofproto_v1_3_parser as P

    from pipeline.peer import PortPeer
    from pipeline.slowpath.openflow.codec import DP
    from tests.openflow_lab import Client
    tag = f"ofp{os.getpid()}"
    p, port = start_pipeline(tmp, tag)
    try:
        c = Client(port)
        c.send_msg(P.OFPSetConfig(DP, 0, 0xFFFF))
        c.send_msg(P.OFPFlowMod(DP, priority=0, match=P.OFPMatch(), instructions=[P.OFPInstructionActions(
            ofp.OFPIT_APPLY_ACTIONS, [P.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)])]))
        c.send_msg(P.OFPBarrierRequest(DP), 9)
        c.until(ofp.OFPT_BARRIER_REPLY, 9)
        frame = bytes.fromhex("0a00000000020a00000000010800" "4500001c0001000040117ccd0a0000010a000002"
                              "04d2003500080000") + bytes(18)
        out_hdr = struct.pack("!IIH6x", ofp.OFP_NO_BUFFER, ofp.OFPP_CONTROLLER, 16) + \
            struct.pack("!HHIH6x", ofp.OFPAT_OUTPUT, 16, 2, 0)
        done = sent = pins = lost = 0
        with PortPeer(f"shm:{tag}a") as a, PortPeer(f"shm:{tag}b") as b:
            t0 = time.perf_counter()
            end = t0 + seconds
            while time.perf_counter() < end:
                if sent - pins - lost < window:
                    n = window - (sent - pins - lost)
                    a.send([frame] * n)
                    sent += n
                try:
                    v, t, xid, raw = c.recv(timeout=0.5)
                except TimeoutError:
                    lost = sent - pins                       # dropped on the way up (counted by the switch)
                    continue
                if t == ofp.OFPT_PACKET_IN:
                    pins += 1
                    body = out_hdr + raw[-len(frame):]       # the whole frame (no max_len cut)
                    c.send(struct.pack("!BBHI", 4, ofp.OFPT_PACKET_OUT, 8 + len(body), xid) + body)
                done += len(b.recv())
            dt = time.perf_counter() - t0
            time.sleep(0.5)
            done += len(b.recv())
        return done / dt, sent
    finally:
        stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rules", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--runs", type=int, default=1)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="valepipe-ofbench-")
    try:
        for r in range(a.runs):
            fm = flow_mods(a.rules, tmp)
            for who, (dt, count) in fm.items():
                print(f"run {r + 1}: {who:9s} add-flows of {a.rules} over OpenFlow 1.3: {dt:6.2f} s, "
                      f"{a.rules / dt:9,.0f} flow_mods/s in effect (barrier-confirmed), {count} rules dumped after")
            rate, sent = round_trips(a.seconds, a.window, tmp)
            print(f"run {r + 1}: valepipe  packet_in -> packet_out round trips: {rate:9,.0f}/s "
                  f"(window {a.window}, {sent} offered)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
