"""The child of a trial: flex_opt's own main with a stand-in tokenizer. run_flexgen loads
facebook/opt-30b's tokenizer from the hub (GPU hosts have no internet), and with dummy weights the
inputs are dummy ids anyway (recorded as ``tokenizer`` in the metadata)."""

from __future__ import annotations

import argparse

STAND_IN_TOKENIZER = "stand-in (pad id 1, left padding, fixed non-pad ids; FlexGen dummy weights)"

class StandInTokenizer:
    """What flex_opt.get_test_inputs needs of OPT's tokenizer: ``tok(prompts, padding="max_length",
    max_length=n).input_ids``, left-padded with OPT's pad id 1. The ids are fixed non-pad ids (BOS 2
    then a few ordinary ones): with dummy weights any ids cost the same and produce the same."""

    pad_token_id = 1
    ids = [2, 100, 200, 300, 400, 500, 600]

    def __call__(self, prompts: list[str], padding: str = "max_length", max_length: int = 0, **_kw):
        class Encoded:
            pass

        encoded = Encoded()
        body = self.ids[:max_length] if max_length else list(self.ids)
        encoded.input_ids = [[self.pad_token_id] * (max_length - len(body)) + body for _ in prompts]
        return encoded

    def batch_decode(self, ids, skip_special_tokens: bool = True) -> list[str]:
        return ["" for _ in ids]


class StandInAutoTokenizer:
    @staticmethod
    def from_pretrained(name: str, **_kw) -> StandInTokenizer:
        return StandInTokenizer()


def run_child(argv: list[str]) -> int:
    """``--run-flexgen FLEX_OPT_ARGS``: flex_opt's own main with the stand-in tokenizer."""
    import flexgen.flex_opt as flex_opt  # only on the GPU host

    flex_opt.AutoTokenizer = StandInAutoTokenizer
    parser = argparse.ArgumentParser(prog="flexgen.flex_opt (stand-in tokenizer)")
    flex_opt.add_parser_arguments(parser)
    args = parser.parse_args(argv)
    if len(args.percent) != 6:
        parser.error("--percent takes six numbers")
    flex_opt.run_flexgen(args)
    return 0
