"""FlexGen 0.1.8 (``python -m bench_client.flexgen``): offloading on one GPU, its policy searched."""

from bench_client.systems.base import Hosts, Kind, PaperAnchor, System

SYSTEM = System(name="flexgen", label="FlexGen", kind=Kind.ONE_GPU, hosts=Hosts.FIRST_GPU_SERVER,
                role="flexgen_bench",
                anchors=(PaperAnchor("flexgen", "paper FlexGen (one T4)"),
                         PaperAnchor("flexgen_4bit", "paper FlexGen 4-bit (one T4)")))
