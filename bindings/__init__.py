"""bindings: OS packet interfaces presented to the pipeline as netmap rings.

shm: ports live in ring/; netmap, AF_XDP, AF_PACKET, TAP and pcap bindings go here.
"""
