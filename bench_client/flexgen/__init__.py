"""FlexGen as the second system (``python -m bench_client.flexgen``), by concern: ``policy`` (the policy,
its memory and cost model, the search space), ``trials`` (one run as a child process, the search),
``log`` (FlexGen's own log), ``tokenizer`` (the child: flex_opt with a stand-in tokenizer), ``cli``
(the benchmark: rows of our TSV + JSONL)."""
