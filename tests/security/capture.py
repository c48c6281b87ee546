"""Capture every frame on one interface (AF_PACKET, no tcpdump needed) until killed; append them to a file.

Run inside a namespace: ``ip netns exec NS python -m tests.security.capture IFACE OUT``.
"""

from __future__ import annotations

import signal
import socket
import sys

ETH_P_ALL = 0x0003


def main(iface: str, out: str) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, 0))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(out, "ab", buffering=0) as handle:
        print("capturing", flush=True)
        while True:
            frame = sock.recv(65535)
            handle.write(len(frame).to_bytes(4, "big") + frame)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
