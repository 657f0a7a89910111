"""The netem router VM: real ``sch_netem`` for hosts whose kernel has none (docs/netem-router.md).

A qemu (TCG) guest of the bundle built by tools/netem-router/build-bundle.sh: Debian's cloud kernel,
busybox and iproute2, no disk. Each link is a tap device of qemu; the guest bridges its NICs (one L2
segment), and shapes what a SERVER sends: ingress of the router NIC facing that server is redirected
to an ifb whose root qdisc is the profile's netem (the paper's "egress of every server host"; the
aggregate of a server's traffic to all peers crosses one netem, as on the server's own NIC).
The client/DHT NIC stays unshaped.

    python -m bench_client.netem.router up --dir D --bundle B --netns NS --link HOSTNS:ADDR/24 ...
    python -m bench_client.netem.router shape --dir D --link 2 --profile paper-10ms-1gbit
    python -m bench_client.netem.router exec --dir D -- tc -s qdisc show
    python -m bench_client.netem.router status|down --dir D
    python -m bench_client.netem.router bench --dir D --bundle B [--smp N]   # the router's own limits

Control channel: a second serial port of the guest, backed by a unix socket in DIR (0700, root).
The guest's agent runs only ``tc``/``ip``/``uname`` argv lines of [A-Za-z0-9 ._:/=+-]; the tc lines come from
the pure functions below (and bench_client.netem.profiles.plan), so profiles change while the swarm's TCP
connections stay up.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench_client.core import daemon
from bench_client.netem import profiles as netem
from bench_client.core.arguments import description

ALLOWED = re.compile(r"[A-Za-z0-9 ._:/=+-]+")
TERMINATOR = "@@nb"
INGRESS_HANDLE = "ffff:"
MAC_PREFIX = "52:54:00:4e:00"
MAX_LINKS = 99  # guest NIC names are n01..n99 (from the MAC's last byte, decimal digits)
COMMANDS = ("tc", "ip", "uname")  # what the guest's agent runs (router-init.sh); uname: the shaping kernel


class RouterError(RuntimeError):
    pass


# --- pure: names, qemu argv, protocol, tc lines ------------------------------------------------


def nic_name(index: int) -> str:
    """The guest's name of the NIC with link ``index`` (its init names NICs after their MAC)."""
    _check_index(index)
    return f"n{index:02d}"


def ifb_name(index: int) -> str:
    _check_index(index)
    return f"ifb{index:02d}"


def mac(index: int) -> str:
    _check_index(index)
    return f"{MAC_PREFIX}:{index:02d}"


def tap_name(prefix: str, index: int) -> str:
    name = f"{prefix}t{index}"
    if len(name) > 15:
        raise RouterError(f"tap name {name!r} is longer than the kernel's 15 characters: shorten the prefix")
    return name


def _check_index(index: int) -> None:
    if not 1 <= index <= MAX_LINKS:
        raise RouterError(f"link index {index} outside 1..{MAX_LINKS}")


def qemu_argv(bundle: Path, taps: dict[int, str], socket_path: Path, console: Path, smp: int = 2,
              memory_mb: int = 1024, queues: int = 1) -> list[str]:
    """The command line of the router VM: one virtio NIC per tap, the console in a file, the control
    agent on the second serial port. ``smp`` vCPUs run as host threads (multi-threaded TCG)."""
    argv = [str(bundle / "bin" / "qemu"), "-accel", "tcg,thread=multi,tb-size=256", "-smp", str(smp),
            "-m", str(memory_mb), "-nodefaults", "-display", "none", "-no-reboot",
            "-bios", str(bundle / "qemu" / "share" / "qboot.rom"),
            "-serial", f"file:{console}",
            "-chardev", f"socket,id=ctl,path={socket_path},server=on,wait=off", "-serial", "chardev:ctl",
            "-kernel", str(bundle / "vmlinuz"), "-initrd", str(bundle / "initrd.img"),
            "-append", "console=ttyS0 quiet panic=-1"]
    for index, tap in sorted(taps.items()):
        mq = f",queues={queues}" if queues > 1 else ""
        dev_mq = f",mq=on,vectors={2 * queues + 2}" if queues > 1 else ""
        argv += ["-netdev", f"tap,id=n{index},ifname={tap},script=no,downscript=no{mq}",
                 "-device", f"virtio-net-pci,netdev=n{index},mac={mac(index)},romfile={dev_mq}"]
    return argv


def encode_request(request_id: str, argv: list[str]) -> bytes:
    """One request line; refuses what the guest's agent would refuse, before anything is sent."""
    if not argv or argv[0] not in COMMANDS:
        raise RouterError(f"the router runs only {', '.join(COMMANDS)} commands, not {argv[:1]}")
    line = " ".join([request_id, *argv])
    if any(not a for a in argv) or not ALLOWED.fullmatch(line):
        raise RouterError(f"refused router command {argv}: empty words or characters outside [A-Za-z0-9 ._:/=+-]")
    return (line + "\n").encode()


def parse_reply(text: str, request_id: str) -> tuple[int, str] | None:
    """(exit status, output) once the reply to ``request_id`` is complete in ``text``, else None.
    Lines before the reply (an earlier, abandoned request's) are dropped with the id check."""
    m = re.search(rf"^{TERMINATOR} {re.escape(request_id)} ([0-9]+)\n", text, re.MULTILINE)
    if not m:
        return None
    body = text[:m.start()]
    start = body.rfind(f"{TERMINATOR} ")  # output of an earlier request ends at its terminator line
    if start >= 0:
        body = body[body.find("\n", start) + 1:] if "\n" in body[start:] else ""
    return int(m.group(1)), body


def ingress_redirect(index: int, ingress_present: bool, ifb_present: bool) -> list[list[str]]:
    """Commands that send everything arriving on link ``index``'s NIC (what that host sends) through
    its ifb, where the shaping qdisc sits; empty when already in place (idempotent)."""
    nic, ifb = nic_name(index), ifb_name(index)
    commands: list[list[str]] = []
    if not ifb_present:
        commands += [["ip", "link", "add", ifb, "type", "ifb"], ["ip", "link", "set", ifb, "up"]]
    if not ingress_present:
        commands += [["tc", "qdisc", "add", "dev", nic, "handle", INGRESS_HANDLE, "ingress"],
                     ["tc", "filter", "add", "dev", nic, "parent", INGRESS_HANDLE, "protocol", "all", "prio", "1",
                      "matchall", "action", "mirred", "egress", "redirect", "dev", ifb]]
    return commands


def shape_commands(index: int, profile: netem.Profile | None, ifb_qdiscs_json: str | None,
                   ingress_present: bool) -> list[list[str]]:
    """Everything that takes link ``index`` to ``profile`` (None: unshaped), from the router's state:
    ``tc -j qdisc show dev IFB`` (None: no ifb yet) and whether the NIC has its ingress redirect.
    The qdisc on the ifb is netem.plan's (same tree, same idempotence as the netem role's); None
    removes the redirect and the ifb (with its qdisc): the link is as the router booted."""
    if profile is None:
        return (([["tc", "qdisc", "del", "dev", nic_name(index), "handle", INGRESS_HANDLE, "ingress"]]
                 if ingress_present else [])
                + ([["ip", "link", "del", ifb_name(index)]] if ifb_qdiscs_json is not None else []))
    return (ingress_redirect(index, ingress_present, ifb_qdiscs_json is not None)
            + netem.plan(ifb_name(index), ifb_qdiscs_json or "[]", profile, "netem"))


# --- the running router -------------------------------------------------------------------------


@dataclass
class Router:
    """A router VM's state directory: pidfile, console, control socket, lock, links."""
    dir: Path

    @property
    def socket_path(self) -> Path:
        return self.dir / "ctl.sock"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid.json"

    @property
    def state_file(self) -> Path:
        return self.dir / "router.json"

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def running(self) -> bool:
        return bool(daemon.status(self.pidfile).get("running"))

    def exec(self, argv: list[str], timeout: float = 30.0) -> tuple[int, str]:
        """Run one tc/ip command in the guest: (exit status, output). One client at a time (qemu's
        socket chardev takes one connection): a lock file serialises callers."""
        request_id = secrets.token_hex(4)
        payload = encode_request(request_id, argv)
        if not self.running():
            raise RouterError(f"the router VM of {self.dir} is not running")
        with open(self.dir / "ctl.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            deadline = time.monotonic() + timeout
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(timeout)
                    sock.connect(str(self.socket_path))
                    sock.sendall(payload)
                    received = ""
                    while (reply := parse_reply(received, request_id)) is None:
                        if time.monotonic() > deadline:
                            raise RouterError(f"no reply from the router to {argv} in {timeout:.0f} s")
                        chunk = sock.recv(65536)
                        if not chunk:
                            raise RouterError(f"the router closed its control channel during {argv}")
                        received += chunk.decode(errors="replace")
            except OSError as exc:  # a router killed a moment ago: its socket resets before its pidfile says so
                if self._stopped_within(2.0):
                    raise RouterError(f"the router VM of {self.dir} is not running") from exc
                raise RouterError(f"the router's control channel failed during {argv}: {exc}") from exc
        return reply

    def _stopped_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.running():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def check(self, argv: list[str]) -> str:
        rc, out = self.exec(argv)
        if rc != 0:
            raise RouterError(f"router: {' '.join(argv)} failed ({rc}): {out.strip()}")
        return out

    def kernel(self) -> str:
        """The release of the kernel whose netem shapes (the guest's ``uname -r``), for the rows."""
        return self.check(["uname", "-r"]).strip()

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds until the agent answers (the guest has booted and bridged its NICs)."""
        start = time.monotonic()
        while True:
            # a second look: while qemu is exec'ed (ip netns exec, the bundle's wrapper, its loader) its
            # environ, which carries the identity, can read empty for a moment (seen on a loaded machine:
            # the router then looked dead, wasn't stopped, and leaked)
            if not self.running() and (time.sleep(0.5) or not self.running()):
                raise RouterError(f"qemu exited during boot: {self.console_tail()}")
            try:
                if self.exec(["ip", "link", "show", "br0"], timeout=2)[0] == 0:
                    return time.monotonic() - start
            except (OSError, RouterError):
                pass
            if time.monotonic() - start > timeout:
                raise RouterError(f"the router did not answer within {timeout:.0f} s: {self.console_tail()}")
            time.sleep(0.2)

    def console_tail(self, chars: int = 1500) -> str:
        try:
            return (self.dir / "console.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no console)"

    def shape(self, index: int, profile: netem.Profile | None) -> list[list[str]]:
        """Apply ``profile`` to what link ``index``'s host sends; returns the commands run."""
        ifb = ifb_name(index)
        rc, shown = self.exec(["tc", "-j", "qdisc", "show", "dev", ifb])
        current = shown if rc == 0 and shown.strip().startswith("[") else None
        ingress = self.exec(["tc", "-j", "qdisc", "show", "dev", nic_name(index), "ingress"])[1]
        commands = shape_commands(index, profile, current, '"ingress"' in ingress)
        for argv in commands:
            self.check(argv)
        return commands


def _ip(netns: str | None, *args: str) -> None:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    proc = subprocess.run([*prefix, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RouterError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


BOOT_ATTEMPTS = 3
BOOT_TIMEOUT_S = 45.0  # a boot takes 2-5 s on the CI machine, 10 s on an H200 host (4 vCPUs)


def up(router_dir: Path, bundle: Path, links: dict[int, str], netns: str | None = None, prefix: str = "nbr",
       smp: int = 2, memory_mb: int = 1024, queues: int = 1) -> Router:
    """Boot the router with one NIC per link ``{index: host netns}``; afterwards each host netns has
    an interface ``{prefix}t{index}`` (the tap, moved there) for the caller to address and bring up.
    qemu runs in ``netns`` (None: this namespace) as a process group recorded in the pidfile."""
    if not (bundle / "bin" / "qemu").exists():
        raise RouterError(f"{bundle} is not a netem router bundle (build it with tools/netem-router/build-bundle.sh)")
    router = Router(router_dir)
    router_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(router_dir, 0o700)  # the control socket runs tc as root in the router
    if router.running():
        raise RouterError(f"a router is already running from {router_dir}")
    taps = {i: tap_name(prefix, i) for i in links}
    router.state_file.write_text(json.dumps({"bundle": str(bundle), "netns": netns, "links": links, "taps": taps,
                                             "started": time.time()}))
    for tap in taps.values():
        _ip(netns, "tuntap", "add", "dev", tap, "mode", "tap", *(["multi_queue"] if queues > 1 else []))
    argv = qemu_argv(bundle, taps, router.socket_path, router_dir / "console.log", smp, memory_mb, queues)
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    for attempt in range(1, BOOT_ATTEMPTS + 1):
        router.socket_path.unlink(missing_ok=True)
        daemon.start(argv, router.pidfile, router_dir / "qemu.log")
        try:
            boot_s = router.wait_ready(BOOT_TIMEOUT_S)
            break
        except RouterError as exc:
            # a TCG guest with several vCPUs sometimes stalls for good early in its boot (RCU stalls
            # on the console; seen once on a fresh H200 host, where boots take 10 s): boot it again
            daemon.stop(router.pidfile, timeout=5)
            (router_dir / "console.log").replace(router_dir / f"console.failed-{attempt}.log")
            if attempt == BOOT_ATTEMPTS:
                raise RouterError(f"{exc} (boot {attempt} of {BOOT_ATTEMPTS}; consoles in {router_dir})") from exc
            print(f"router: boot {attempt} of {BOOT_ATTEMPTS} did not answer within {BOOT_TIMEOUT_S:.0f} s; "
                  "booting again", file=sys.stderr, flush=True)
    for index, tap in taps.items():
        _ip(netns, "link", "set", tap, "netns", links[index])
    state = router.state()
    state["boot_s"] = round(boot_s, 2)
    router.state_file.write_text(json.dumps(state))
    return router


def down(router_dir: Path) -> dict:
    """Stop qemu by its process group (its taps vanish with their namespaces or are deleted here)."""
    router = Router(router_dir)
    state = router.state()
    result = daemon.stop(router.pidfile)
    for index, tap in (state.get("taps") or {}).items():
        for ns in (state.get("links", {}).get(index), state.get("netns")):
            if ns is not None or state.get("netns") is None:
                subprocess.run(["ip", *(["-n", ns] if ns else []), "link", "del", tap], capture_output=True)
    router.socket_path.unlink(missing_ok=True)
    router.state_file.unlink(missing_ok=True)
    return result


def measure_pair(client_ns: str, server_ns: str, address: str, seconds: int = 4, pings: int = 10) -> dict[str, float]:
    """ping + iperf3 from ``client_ns`` to ``address`` in ``server_ns`` (what the client's host
    sends), parsed by bench_client.netem.profiles; the iperf3 server is stopped by its process group."""
    def in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=120)

    pidfile = Path(f"/tmp/nb-router-iperf-{os.getpid()}.json")
    daemon.start(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", address], pidfile, Path(os.devnull))
    try:
        result = netem.parse_ping(in_ns(client_ns, "ping", "-c", str(pings), "-i", "0.2", address).stdout)
        for _ in range(30):  # until the server listens
            run = in_ns(client_ns, "iperf3", "-c", address, "-t", str(seconds), "-O", "1", "-J")
            if run.returncode == 0:
                break
            time.sleep(0.2)
        result.update(netem.parse_iperf3(run.stdout))
    finally:
        daemon.stop(pidfile, timeout=5)
    return result


def bench(bundle: Path, work: Path, smp: int = 2, queues: int = 1, prefix: str = "nbrb") -> dict:
    """The router's own limits and each paper profile between two namespaces (link 1 shaped, the
    server role; link 2 unshaped, the client role): boot time, then rate/RTT per profile."""
    names = [f"{prefix}q", f"{prefix}a", f"{prefix}b"]
    report: dict = {"smp": smp, "queues": queues, "cores": os.cpu_count(), "profiles": {}}
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)
    try:
        router = up(work, bundle.resolve(), {1: names[1], 2: names[2]}, netns=names[0], prefix=prefix, smp=smp,
                    queues=queues)
        report["boot_s"] = router.state()["boot_s"]
        for i, ns in ((1, names[1]), (2, names[2])):
            _ip(ns, "addr", "add", f"10.216.0.{i}/24", "dev", tap_name(prefix, i))
            _ip(ns, "link", "set", tap_name(prefix, i), "up")
        for name in [netem.NO_SHAPING, *netem.PAPER_PROFILES]:
            profile = netem.resolve_profile(name)
            router.shape(1, profile)
            measured = measure_pair(names[1], names[2], "10.216.0.2")
            report["profiles"][name] = {**measured, "problems": netem.judge(profile, None, measured) if profile else []}
    finally:
        down(work)
        for n in names:
            subprocess.run(["ip", "netns", "delete", n], capture_output=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench_client.netem.router", description=description(__doc__))
    parser.add_argument("action", choices=["up", "shape", "exec", "status", "down", "bench"])
    parser.add_argument("--dir", type=Path, required=True, help="router state: pidfile, console, control socket")
    parser.add_argument("--bundle", type=Path, help="unpacked bundle (up)")
    parser.add_argument("--netns", help="namespace qemu runs in (up)")
    parser.add_argument("--link", action="append", default=[],
                        help="up: INDEX=HOSTNS (repeatable); shape: INDEX")
    parser.add_argument("--profile", help="shape: a paper profile name, none, or a JSON dict (netem role syntax)")
    parser.add_argument("--force", action="store_true", help="shape: apply values past netem's safety floors")
    parser.add_argument("--smp", type=int, default=2)
    parser.add_argument("--queues", type=int, default=1)
    parser.add_argument("--prefix", default="nbr")
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)  # exec's command follows "--"
    args = parser.parse_args(argv[:split])
    args.command = argv[split + 1:]
    try:
        if args.action == "up":
            if not args.bundle or not args.link:
                raise RouterError("up needs --bundle and at least one --link INDEX=HOSTNS")
            links = {int(k): v for k, _, v in (spec.partition("=") for spec in args.link)}
            router = up(args.dir, args.bundle, links, args.netns, args.prefix, args.smp, queues=args.queues)
            print(json.dumps({"changed": True, **router.state()}))
        elif args.action == "shape":
            spec = json.loads(args.profile) if (args.profile or "").lstrip().startswith("{") else args.profile
            profile = netem.resolve_profile(spec, force=args.force)
            commands = []
            for index in args.link:
                commands += Router(args.dir).shape(int(index), profile)
            print(json.dumps({"changed": bool(commands), "commands": commands, "kernel": Router(args.dir).kernel()}))
        elif args.action == "exec":
            rc, out = Router(args.dir).exec(args.command)
            sys.stdout.write(out)
            return rc
        elif args.action == "bench":
            if not args.bundle:
                raise RouterError("bench needs --bundle")
            print(json.dumps(bench(args.bundle, args.dir, args.smp, args.queues), indent=1))
        elif args.action == "status":
            router = Router(args.dir)
            print(json.dumps({"running": router.running(), **router.state()}))
        else:
            print(json.dumps(down(args.dir)))
    except (RouterError, netem.ProfileError, daemon.DaemonError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
