#!/usr/bin/env python3
"""An independent mDNS peer for interop tests (python-zeroconf).

Run it inside a test network namespace only, never in the machine's own
(it multicasts on every interface):

    ip netns exec NS python3 zeroconf_peer.py --seconds 3 \
        [--advertise --pubkey HEX --port 7421 --ip 10.77.0.2]

It browses `_mmogit._tcp.local.` for `--seconds` and, with `--advertise`,
announces a service of its own with TXT `v=1` and `pk=<pubkey>`, as
mmogit does (docs/PROTOCOL.md, "LAN discovery"). At the end it prints one
JSON array on stdout: every service it resolved, as
{"name", "port", "addresses", "txt": {key: value}}.
"""

import argparse
import json
import socket
import sys
import time

from zeroconf import ServiceBrowser, ServiceInfo, ServiceListener, Zeroconf

SERVICE_TYPE = "_mmogit._tcp.local."


class Collect(ServiceListener):
    def __init__(self):
        self.names = set()

    def add_service(self, zc, type_, name):
        self.names.add(name)

    def update_service(self, zc, type_, name):
        self.names.add(name)

    def remove_service(self, zc, type_, name):
        self.names.discard(name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--advertise", action="store_true")
    ap.add_argument("--pubkey")
    ap.add_argument("--port", type=int, default=7421)
    ap.add_argument("--ip", default="10.77.0.2")
    args = ap.parse_args()

    zc = Zeroconf()
    info = None
    if args.advertise:
        if not args.pubkey:
            ap.error("--advertise needs --pubkey")
        label = "pyzc-" + args.pubkey[:16]
        info = ServiceInfo(
            SERVICE_TYPE,
            f"{label}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(args.ip)],
            port=args.port,
            properties={"v": "1", "pk": args.pubkey},
            server=f"{label}.local.",
        )
        zc.register_service(info)
    listener = Collect()
    ServiceBrowser(zc, SERVICE_TYPE, listener)
    time.sleep(args.seconds)
    out = []
    for name in sorted(listener.names):
        si = zc.get_service_info(SERVICE_TYPE, name, timeout=1000)
        if si is None:
            continue
        txt = {
            k.decode(errors="replace"): (v.decode(errors="replace") if v is not None else None)
            for k, v in si.properties.items()
        }
        out.append(
            {
                "name": name,
                "port": si.port,
                "addresses": si.parsed_addresses(),
                "txt": txt,
            }
        )
    if info is not None:
        zc.unregister_service(info)
    zc.close()
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
