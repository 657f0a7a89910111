"""Network shaping profiles as data: parse and check them, turn them into tc command lines, tell
whether the qdiscs already on an interface are the wanted ones, and judge measurements.

Pure functions (no kernel, no subprocess): the Ansible role ``netem`` calls them through its filter
plugin and runs the resulting argv lists on the hosts. Units inside: microseconds, bit/s, percent,
packets.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

# The handle of the root qdisc this module installs: anything else on an interface is not ours.
ROOT_HANDLE = "4e54:"
SHAPED_HANDLE = "4e55:"  # the shaping qdisc under the htb root when control traffic bypasses it
NETEM_DEFAULT_LIMIT = 1000  # packets, netem's own default
MTU_BYTES = 1514  # a full Ethernet frame: converts a packet limit into tbf's byte limit

# Root qdiscs a kernel or distribution installs by itself: replacing (then deleting) ours restores them.
DEFAULT_ROOT_KINDS = frozenset({"noqueue", "pfifo_fast", "mq", "fq_codel", "fq", "pfifo", "cake"})

# Safety floors: values past these are refused unless forced (they cut a host off or measure nothing).
MIN_RATE_BIT = 1_000_000  # below 1 Mbit/s ssh and Ansible crawl; no paper profile is near it
MAX_RATE_BIT = 400_000_000_000
MAX_DELAY_US = 5_000_000  # one way; a geostationary hop is ~300 ms, minutes are a typo
MAX_LOSS_PCT = 25.0
MAX_LIMIT = 10_000_000  # packets; the paper's largest is 2,250,000


class ProfileError(ValueError):
    """A profile that cannot be parsed or is refused by the safety floors."""


@dataclass(frozen=True)
class Profile:
    name: str
    delay_us: int = 0
    jitter_us: int = 0
    rate_bit: int = 0  # 0: no rate limit
    loss_pct: float = 0.0
    limit: int = NETEM_DEFAULT_LIMIT

    @property
    def needs_netem(self) -> bool:
        """Only netem delays, jitters or drops; a pure rate limit can be tbf."""
        return bool(self.delay_us or self.jitter_us or self.loss_pct)

    @property
    def shapes(self) -> bool:
        return self.needs_netem or bool(self.rate_bit)

    def describe(self) -> dict[str, Any]:
        """Human units, as stored in facts and results metadata."""
        return {
            "name": self.name,
            "delay_ms": self.delay_us / 1000,
            "jitter_ms": self.jitter_us / 1000,
            "rate_mbit": self.rate_bit / 1e6,
            "loss_pct": self.loss_pct,
            "limit": self.limit,
        }


# The FlexGen paper's Petals settings (§6.3): egress of every host, root qdisc.
PAPER_PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("paper-10ms-1gbit", delay_us=10_000, rate_bit=1_000_000_000, limit=225_000),
        Profile("paper-10ms-100mbit", delay_us=10_000, rate_bit=100_000_000, limit=22_500),
        Profile("paper-100ms-100mbit", delay_us=100_000, rate_bit=100_000_000, limit=2_250_000),
    )
}
NO_SHAPING = "none"
PROFILE_KEYS = frozenset({"name", "delay", "jitter", "rate", "loss", "limit"})

_NUMBER = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_TIME_UNITS = {"": 1000.0, "us": 1.0, "usec": 1.0, "ms": 1000.0, "msec": 1000.0, "s": 1e6, "sec": 1e6}
# tc's units: *bit are bits per second, *bps are BYTES per second (tc-rate semantics, kept on purpose).
_RATE_UNITS = {
    "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
    "kibit": 2**10, "mibit": 2**20, "gibit": 2**30, "tibit": 2**40,
    "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9, "tbps": 8 * 10**12,
}


def parse_time_us(value: Any, what: str = "delay") -> int:
    """'10ms', '0.1s', '250us', or a bare number of milliseconds -> microseconds."""
    if isinstance(value, bool):
        raise ProfileError(f"{what}: expected a time such as 10ms, got {value!r}")
    if isinstance(value, (int, float)):
        text = f"{value}ms"
    else:
        text = str(value).strip().lower().replace(" ", "")
    m = re.fullmatch(_NUMBER + r"([a-z]*)", text)
    if not m or m.group(2) not in _TIME_UNITS:
        raise ProfileError(f"{what}: expected a time such as 10ms, 0.1s or 250us, got {value!r}")
    return round(float(m.group(1)) * _TIME_UNITS[m.group(2)])


def parse_rate_bit(value: Any) -> int:
    """tc rate syntax ('100mbit', '1gbit', '12.5mbps' = bytes) -> bit/s; a unit is required."""
    text = str(value).strip().lower().replace(" ", "")
    m = re.fullmatch(_NUMBER + r"([a-z]+)", text)
    if isinstance(value, bool) or not m or m.group(2) not in _RATE_UNITS:
        raise ProfileError(
            f"rate: expected a tc rate with a unit such as 100mbit or 1gbit (mbps means MBytes/s), got {value!r}"
        )
    rate = round(float(m.group(1)) * _RATE_UNITS[m.group(2)])
    if rate < 1:  # Profile.rate_bit 0 means "no rate limit": a zero written down cannot mean that
        raise ProfileError(f"rate: {value!r} is no rate at all (0 bit/s would be applied as no rate limit); "
                           "leave rate out for an unlimited link or give one such as 100mbit")
    return rate


def parse_loss_pct(value: Any) -> float:
    """'1%', '0.5 %' or a bare number of percent -> percent."""
    text = str(value).strip().replace(" ", "").removesuffix("%")
    if isinstance(value, bool) or not re.fullmatch(_NUMBER, text):
        raise ProfileError(f"loss: expected a percentage such as 1% or 0.5, got {value!r}")
    pct = float(text)
    if pct > 100:
        raise ProfileError(f"loss: {pct}% is more than 100%")
    return pct


def parse_limit(value: Any) -> int:
    """A queue length in packets (netem's `limit`)."""
    if isinstance(value, bool) or not re.fullmatch(r"-?[0-9]+", str(value).strip()):
        raise ProfileError(f"limit: expected a number of packets, got {value!r}")
    limit = int(str(value).strip())
    if limit < 1:  # netem would drop every packet (0) or tc refuse it (negative)
        raise ProfileError(f"limit: must be at least 1 packet, got {limit}")
    return limit


def safety_problems(profile: Profile) -> list[str]:
    """What the safety floors refuse in ``profile`` (empty: safe)."""
    problems = []
    if profile.rate_bit and profile.rate_bit < MIN_RATE_BIT:
        problems.append(f"rate {format_rate(profile.rate_bit)} is below the floor of {format_rate(MIN_RATE_BIT)}")
    if profile.rate_bit > MAX_RATE_BIT:
        problems.append(f"rate {format_rate(profile.rate_bit)} is above {format_rate(MAX_RATE_BIT)}")
    if profile.delay_us > MAX_DELAY_US:
        problems.append(f"delay {format_time(profile.delay_us)} is above {format_time(MAX_DELAY_US)}")
    if profile.jitter_us > profile.delay_us:
        problems.append("jitter larger than the delay reorders most packets")
    if profile.loss_pct > MAX_LOSS_PCT:
        problems.append(f"loss {profile.loss_pct}% is above {MAX_LOSS_PCT}%")
    if profile.limit > MAX_LIMIT:
        problems.append(f"limit {profile.limit} packets is above {MAX_LIMIT}")
    return problems


def resolve_profile(spec: Any, force: bool = False) -> Profile | None:
    """A paper profile name, ``none`` (None: no shaping) or a dict {delay, jitter, rate, loss, limit}.

    Raises ProfileError with one line naming every problem; the safety floors are skipped only when
    ``force`` is true, syntax errors never are.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == NO_SHAPING):
        return None
    if isinstance(spec, str):
        name = spec.strip()
        if name not in PAPER_PROFILES:
            known = ", ".join([*PAPER_PROFILES, NO_SHAPING])
            raise ProfileError(f"unknown profile {name!r}: use one of {known} or a dict of delay/jitter/rate/loss/limit")
        profile = PAPER_PROFILES[name]
    elif isinstance(spec, dict):
        unknown = set(spec) - PROFILE_KEYS
        if unknown:
            raise ProfileError(f"unknown profile keys {sorted(unknown)}: allowed are {sorted(PROFILE_KEYS)}")
        fields: dict[str, Any] = {}
        if spec.get("delay") not in (None, ""):
            fields["delay_us"] = parse_time_us(spec["delay"], "delay")
        if spec.get("jitter") not in (None, ""):
            fields["jitter_us"] = parse_time_us(spec["jitter"], "jitter")
            if not fields.get("delay_us"):
                raise ProfileError("jitter needs a delay (netem varies the delay by the jitter)")
        if spec.get("rate") not in (None, ""):
            fields["rate_bit"] = parse_rate_bit(spec["rate"])
        if spec.get("loss") not in (None, ""):
            fields["loss_pct"] = parse_loss_pct(spec["loss"])
        if spec.get("limit") not in (None, ""):
            fields["limit"] = parse_limit(spec["limit"])
        profile = Profile(name=str(spec.get("name") or "custom"), **fields)
        unshaped = profile.name.strip().lower() == NO_SHAPING
        if (unshaped or profile.name.lower().startswith("paper-")) and PAPER_PROFILES.get(profile.name) != profile:
            # results are labelled by the profile's name: 'none' means unshaped, paper-* the paper's values
            what = "no shaping" if unshaped else "the paper profiles"
            raise ProfileError(f"the name {profile.name!r} is reserved ({what}) and these values differ from it; "
                               "give the custom profile a name of its own, e.g. wan50")
        if not profile.shapes:
            raise ProfileError("profile shapes nothing: give a delay, rate or loss (or use the name 'none')")
    else:
        raise ProfileError(f"a profile is a name or a dict, got {type(spec).__name__}")
    problems = safety_problems(profile)
    if problems and not force:
        raise ProfileError(f"profile {profile.name!r} refused: {'; '.join(problems)} (set netem_force to apply anyway)")
    return profile


def format_time(us: int) -> str:
    return f"{us // 1000}ms" if us % 1000 == 0 else f"{us}us"


def format_rate(bit: int) -> str:
    for unit, factor in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bit >= factor and bit % factor == 0:
            return f"{bit // factor}{unit}"
    return f"{bit}bit"


# --- qdisc trees --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Qdisc:
    kind: str
    handle: str
    parent: str  # "root" or a class id such as 4e54:2
    args: tuple[str, ...] = ()
    expect: dict[str, Any] = field(default_factory=dict, compare=False)  # what `tc -j` must show


def tbf_burst_bytes(rate_bit: int) -> int:
    """2 ms of traffic, at least 10 full frames: large enough for tbf to reach its rate, small
    enough that a burst does not exceed it measurably."""
    return max(rate_bit // 8 // 500, 10 * MTU_BYTES)


def shaping_qdisc(profile: Profile, kind: str, handle: str, parent: str) -> Qdisc:
    """The qdisc that does the shaping: netem (delay, jitter, loss, rate) or tbf (rate only)."""
    if kind == "netem":
        args: list[str] = []
        if profile.delay_us:
            args += ["delay", format_time(profile.delay_us)]
            if profile.jitter_us:
                args.append(format_time(profile.jitter_us))
        if profile.loss_pct:
            args += ["loss", "random", f"{profile.loss_pct:g}%"]
        if profile.rate_bit:
            args += ["rate", format_rate(profile.rate_bit)]
        args += ["limit", str(profile.limit)]
        expect = {"delay_us": profile.delay_us, "jitter_us": profile.jitter_us, "loss_pct": profile.loss_pct,
                  "rate_bit": profile.rate_bit, "limit": profile.limit}
        return Qdisc("netem", handle, parent, tuple(args), expect)
    if kind == "tbf":
        if profile.needs_netem:
            raise ProfileError(f"profile {profile.name!r} needs netem (delay, jitter or loss): tbf only limits the rate")
        if not profile.rate_bit:
            raise ProfileError("tbf needs a rate")
        limit_bytes = min(profile.limit * MTU_BYTES, 2**32 - 1)
        args = ["rate", format_rate(profile.rate_bit), "burst", str(tbf_burst_bytes(profile.rate_bit)),
                "limit", str(limit_bytes)]
        return Qdisc("tbf", handle, parent, tuple(args), {"rate_bit": profile.rate_bit})
    raise ProfileError(f"unknown shaping qdisc {kind!r}: netem or tbf")


UNSHAPED_CLASS_RATE = "100gbit"  # htb classes of the bypass tree: far above any NIC, so htb never limits


def desired_qdiscs(profile: Profile, kind: str, bypass_ports: list[int] | None = None) -> list[Qdisc]:
    """The tree for ``profile``: one root qdisc (the paper's setting), or, when ``bypass_ports`` is
    given, an htb root (htb: present in every kernel we met, unlike prio) whose class 1 carries
    those TCP ports unshaped and class 2 (the default) everything else through the shaping qdisc."""
    if not bypass_ports:
        return [shaping_qdisc(profile, kind, ROOT_HANDLE, "root")]
    htb = Qdisc("htb", ROOT_HANDLE, "root", ("default", "2"), {})
    return [htb, shaping_qdisc(profile, kind, SHAPED_HANDLE, ROOT_HANDLE + "2")]


def bypass_classes(interface: str) -> list[list[str]]:
    """The two htb classes under the bypass root, both unlimited in practice."""
    return [["tc", "class", "add", "dev", interface, "parent", ROOT_HANDLE, "classid", f"{ROOT_HANDLE}{n}",
             "htb", "rate", UNSHAPED_CLASS_RATE, "quantum", "60000"] for n in (1, 2)]


def bypass_filters(interface: str, ports: list[int]) -> list[list[str]]:
    """u32 filters sending TCP traffic to or from ``ports`` (ssh) into the unshaped htb class."""
    commands = []
    for pref, proto, match in (("1", "ip", "ip"), ("2", "ipv6", "ip6")):  # one filter priority per protocol
        for port in ports:
            for direction in ("sport", "dport"):
                commands.append(["tc", "filter", "add", "dev", interface, "parent", ROOT_HANDLE, "protocol", proto,
                                 "prio", pref, "u32", "match", match, "protocol", "6", "0xff",
                                 "match", match, direction, str(port), "0xffff", "flowid", ROOT_HANDLE + "1"])
    return commands


def expected_filter_count(ports: list[int]) -> int:
    return 4 * len(ports)  # (ip, ipv6) x (sport, dport)


def _normalise_live(q: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a `tc -j qdisc show` entry, in this module's units."""
    opts = q.get("options") or {}
    kind = q.get("kind")
    if kind == "netem":
        delay = opts.get("delay") or {}
        loss = opts.get("loss-random") or {}
        rate = opts.get("rate") or {}
        return {
            "delay_us": round(float(delay.get("delay", 0)) * 1e6),
            "jitter_us": round(float(delay.get("jitter", 0)) * 1e6),
            "loss_pct": round(float(loss.get("loss", 0)) * 100, 6),
            "rate_bit": int(rate.get("rate", 0)) * 8,
            "limit": int(opts.get("limit", 0)),
        }
    if kind == "tbf":
        return {"rate_bit": int(opts.get("rate", 0)) * 8}
    return {}


def _close(live: Any, want: Any) -> bool:
    if isinstance(want, float) or isinstance(live, float):
        return math.isclose(float(live), float(want), rel_tol=1e-3, abs_tol=1e-6)
    if isinstance(want, int) and want > 1_000_000:  # tc rounds rates to its internal units
        return abs(int(live) - want) <= want * 1e-3
    return live == want


def load_qdiscs(show_json: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`tc -j qdisc show dev X` output (text or parsed), without ingress/clsact hooks."""
    entries = json.loads(show_json) if isinstance(show_json, str) else show_json
    return [q for q in entries if q.get("kind") not in ("ingress", "clsact")]


def root_qdisc(current: list[dict[str, Any]]) -> dict[str, Any] | None:
    for q in current:
        if q.get("root") or q.get("parent") == "root":
            return q
    return None


def qdiscs_match(current: list[dict[str, Any]], desired: list[Qdisc]) -> bool:
    """True when the interface carries exactly ``desired`` (kinds, places and parameters)."""
    ours = [q for q in current if q.get("handle") in (ROOT_HANDLE, SHAPED_HANDLE)]
    root = root_qdisc(current)
    if root is None or root.get("handle") != ROOT_HANDLE or len(ours) != len(desired):
        return False
    by_handle = {q["handle"]: q for q in ours}
    for want in desired:
        live = by_handle.get(want.handle)
        if live is None or live.get("kind") != want.kind:
            return False
        is_root = bool(live.get("root")) or live.get("parent") == "root"
        if (want.parent == "root") != is_root or (not is_root and live.get("parent") != want.parent):
            return False
        params = _normalise_live(live)
        if any(not _close(params.get(k), v) for k, v in want.expect.items()):
            return False
    # A qdisc grafted under ours that we did not ask for is a difference too (class 1's default
    # fifo is expected: it carries the unshaped traffic).
    mine = {ROOT_HANDLE, SHAPED_HANDLE}
    extra = [q for q in current if q.get("handle") not in mine and q.get("parent") != ROOT_HANDLE + "1"
             and str(q.get("parent", "")).split(":")[0] + ":" in mine]
    return not extra


class ForeignQdiscError(RuntimeError):
    """The interface carries a root qdisc someone else configured: replacing it would lose it."""


def plan(interface: str, show_json: str | list[dict[str, Any]], profile: Profile | None, kind: str = "netem",
         bypass_ports: list[int] | None = None, filter_count: int | None = None,
         force: bool = False) -> list[list[str]]:
    """The tc argv lists that take ``interface`` from its current qdiscs to ``profile`` (None:
    unshaped). Empty when nothing needs to change (idempotence). A different profile replaces
    ours (delete, then add: never stacked); a foreign root qdisc is kept unless ``force``."""
    current = load_qdiscs(show_json)
    root = root_qdisc(current)
    ours = root is not None and root.get("handle") == ROOT_HANDLE
    delete = [["tc", "qdisc", "del", "dev", interface, "root"]]
    if profile is None:
        return delete if ours else []
    desired = desired_qdiscs(profile, kind, bypass_ports)
    ports = list(bypass_ports or [])
    if ours and qdiscs_match(current, desired) and (not ports or filter_count == expected_filter_count(ports)):
        return []
    commands: list[list[str]] = []
    if ours:
        commands += delete
    elif root is not None and root.get("kind") not in DEFAULT_ROOT_KINDS and not force:
        raise ForeignQdiscError(
            f"{interface} has a root qdisc {root.get('kind')} {root.get('handle')} that this role did not install; "
            "remove it or set netem_force"
        )
    elif root is not None and root.get("handle") not in (None, "0:"):
        commands += delete  # an explicitly configured default kind: make room, the kernel restores its own later
    for q in desired:
        place = ["root"] if q.parent == "root" else ["parent", q.parent]
        commands.append(["tc", "qdisc", "add", "dev", interface, *place, "handle", q.handle, q.kind, *q.args])
        if ports and q.parent == "root":
            commands += bypass_classes(interface)
    if ports:
        commands += bypass_filters(interface, ports)
    return commands


def check_unshaped(interface: str, show_json: str | list[dict[str, Any]], force: bool = False) -> None:
    """Before a profile "none" is measured: a root qdisc someone else configured would shape it (a row
    would say "none" and measure that qdisc). ForeignQdiscError unless ``force``; ours is removed
    (``plan(..., None)``) and the kernel's defaults are no shaping."""
    root = root_qdisc(load_qdiscs(show_json))
    if root is None or root.get("handle") == ROOT_HANDLE or root.get("kind") in DEFAULT_ROOT_KINDS or force:
        return
    raise ForeignQdiscError(
        f"{interface} has a root qdisc {root.get('kind')} {root.get('handle')} that this role did not install: "
        "profile 'none' would be measured through it; remove it or set netem_force"
    )


def count_filters(filter_show_text: str) -> int:
    """Number of u32 entries steering into the unshaped band, from `tc filter show dev X parent 4e54:`."""
    return len(re.findall(r"flowid " + re.escape(ROOT_HANDLE + "1") + r"\b", filter_show_text))


# --- measurements -------------------------------------------------------------------------------


def parse_ping(output: str) -> dict[str, float]:
    """RTT statistics (ms) and loss (%) from iputils ping output. The median comes from the
    per-packet lines (ping without -q): one slow first packet (ARP, a busy host) moves the
    average, not the median."""
    rtt = re.search(r"= ([0-9.]+)/([0-9.]+)/([0-9.]+)(?:/([0-9.]+))? ms", output)
    loss = re.search(r"([0-9.]+)% packet loss", output)
    if not rtt or not loss:
        raise ValueError(f"cannot read ping output: {output.strip()[-200:]!r}")
    times = sorted(float(t) for t in re.findall(r"time=([0-9.]+) ms", output))
    avg = float(rtt.group(2))
    median = (times[len(times) // 2] if len(times) % 2 else (times[len(times) // 2 - 1] + times[len(times) // 2]) / 2
              ) if times else avg
    return {"rtt_min_ms": float(rtt.group(1)), "rtt_avg_ms": avg, "rtt_median_ms": median,
            "rtt_max_ms": float(rtt.group(3)), "rtt_mdev_ms": float(rtt.group(4) or 0),
            "ping_loss_pct": float(loss.group(1))}


def parse_iperf3(output: str | dict[str, Any]) -> dict[str, float]:
    """Received rate (Mbit/s) and sender retransmits from `iperf3 -J` output."""
    data = json.loads(output) if isinstance(output, str) else output
    if "error" in data:
        raise ValueError(f"iperf3: {data['error']}")
    end = data["end"]
    return {"rate_mbit": end["sum_received"]["bits_per_second"] / 1e6,
            "retransmits": float(end.get("sum_sent", {}).get("retransmits", 0))}


def rate_schedule(peers: dict[str, list[str]], per_host: int = 1, max_flows: int = 0) -> list[dict[str, str]]:
    """Which iperf3 flows run together: a list of rounds, each ``{sender: receiver}``.

    Every host runs in one play, so the rates are measured at once rather than one host after another,
    but never so that flows share what they measure: in a round a host sends or receives one flow, not
    both (a receiver's ACKs leave through its own shaped queue, and behind its own data they would
    slow the flow it receives). ``per_host``: how many of its peers each host measures its rate to,
    nearest first in a ring of the sorted hosts (its rate is its own egress limit, the same towards
    every peer; the RTT is measured to all of them); 0 = all. ``max_flows``: flows per round (0 = no
    cap; a netem router VM has a rate of its own)."""
    hosts = sorted(set(peers) | {p for targets in peers.values() for p in targets})
    index = {host: i for i, host in enumerate(hosts)}

    def distance(sender: str, receiver: str) -> int:
        return (index[receiver] - index[sender]) % len(hosts)

    pairs = []
    for sender in sorted(peers):
        targets = sorted({p for p in peers[sender] if p != sender}, key=lambda p: distance(sender, p))
        pairs += [(sender, receiver) for receiver in (targets[:per_host] if per_host > 0 else targets)]
    pairs.sort(key=lambda pair: (distance(*pair), index[pair[0]]))
    rounds: list[dict[str, str]] = []
    while pairs:
        busy: set[str] = set()
        flows: dict[str, str] = {}
        for sender, receiver in list(pairs):
            if sender in busy or receiver in busy or (max_flows > 0 and len(flows) >= max_flows):
                continue
            flows[sender] = receiver
            busy |= {sender, receiver}
            pairs.remove((sender, receiver))
        rounds.append(flows)
    return rounds


def iperf_timing(rtt_ms: float, seconds: int = 0, omit: int = 0) -> tuple[int, int]:
    """iperf3's -t (measured seconds) and -O (ramp-up left out) for one flow over ``rtt_ms``; 0 = derived:
    10 round trips each, at least 1 s. TCP's slow start reaches these profiles' windows in under 10
    round trips (100 Mbit/s over 200 ms: 2.5 MB, 8 doublings of 10 segments); with 1 s + 1 s a
    flow over 200 ms read 54 Mbit/s of 100 on the H200 host, and 3 tries were spent on it."""
    derived = max(1, math.ceil(10 * rtt_ms / 1000))
    return (int(seconds) or derived, int(omit) or derived)


@dataclass(frozen=True)
class Tolerance:
    rtt_ms: float = 5.0  # average RTT may exceed the configured delays by this (base RTT, scheduling)
    rate_cap: float = 0.05  # measured rate may exceed the configured rate by this fraction
    rate_achieved: float = 0.85  # ... and must reach this fraction of it (0: only check the cap)


def expected_rtt_ms(own: Profile | None, peer: Profile | None) -> float:
    """Each host delays its own egress, so a round trip crosses both delays."""
    return sum(p.delay_us for p in (own, peer) if p) / 1000


def judge(own: Profile | None, peer: Profile | None, measured: dict[str, float],
          tol: Tolerance = Tolerance()) -> list[str]:
    """Why ``measured`` (parse_ping + parse_iperf3 towards one peer) does not show the shaping.
    Delay: the minimum RTT between the sum of both delays (less the jitters) and that sum +
    tol.rtt_ms (more the jitters). The minimum, not the median, bounds it from above: a delay that
    is really there twice (two profiles, a leftover qdisc) raises every ping, while a busy machine
    delays some of them (CI's 2 cores under qemu TCG read a median of 29.4 ms over a minimum near
    21 ms for 10 ms + 10 ms). Rate: this host's egress rate is a cap, and is reached within
    tol.rate_achieved."""
    problems = []
    want = expected_rtt_ms(own, peer)
    jitter = sum(p.jitter_us for p in (own, peer) if p) / 1000
    low = measured.get("rtt_min_ms", measured.get("rtt_median_ms", measured.get("rtt_avg_ms")))
    if low is not None and low < want - jitter - 0.2:
        problems.append(f"RTT {low:.2f} ms is below the configured {want:g} ms: the delay is not in effect")
    elif low is not None and low > want + jitter + tol.rtt_ms:
        problems.append(f"minimum RTT {low:.2f} ms exceeds the configured {want:g} ms by more than {tol.rtt_ms:g} ms")
    rate = measured.get("rate_mbit")
    if own and own.rate_bit and rate is not None:
        cap = own.rate_bit / 1e6
        if rate > cap * (1 + tol.rate_cap):
            problems.append(f"rate {rate:.1f} Mbit/s exceeds the {cap:g} Mbit/s cap: the rate limit is not in effect")
        elif rate < cap * tol.rate_achieved:
            problems.append(f"rate {rate:.1f} Mbit/s is below {tol.rate_achieved:.0%} of the configured {cap:g} Mbit/s")
    return problems


def profile_dict(profile: Profile | None) -> dict[str, Any] | None:
    return None if profile is None else asdict(profile)


def profile_from_dict(data: dict[str, Any] | None) -> Profile | None:
    return None if not data else Profile(**data)
