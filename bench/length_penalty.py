"""Which length penalty and alpha to decode with, chosen on the validation set, never on a test set.

Translates the validation split at one beam with each (penalty, alpha) and
reports BLEU, chrF, the mean output/reference length ratio and empty outputs;
the best on validation is then scored once on test_2016_flickr.

    python bench/length_penalty.py --run runs/demo/en-de --beam 5
"""

from __future__ import annotations

import argparse
from datetime import date

from results import DATA, append_entry, machine, read_lines

SETTINGS = [("gnmt", 0.6), ("gnmt", 1.0), ("average", 0.6), ("average", 1.0), ("none", 0.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--src", default="en")
    parser.add_argument("--tgt", default="de")
    args = parser.parse_args()

    import torch

    from seq2seq.config import DecodeConfig
    from seq2seq.scores import score_corpus
    from seq2seq.search.translator import Translator

    def scores(cfg: DecodeConfig, split: str) -> dict:
        sources, refs = read_lines(DATA / f"{split}.{args.src}.gz"), read_lines(DATA / f"{split}.{args.tgt}.gz")
        translator = Translator.from_run(args.run, torch.device("cpu"), cfg)
        hyps = translator.translate(sources)
        bleu, chrf = score_corpus(hyps, [refs], metrics=("bleu", "chrf"))
        ratio = sum(len(h.split()) for h in hyps) / sum(len(r.split()) for r in refs)
        return {"bleu": bleu.score, "chrf": chrf.score, "ratio": ratio, "empty": translator.stats.empty_outputs}

    found = {}
    for penalty, alpha in SETTINGS:
        found[(penalty, alpha)] = scores(DecodeConfig(beam=args.beam, length_penalty=penalty, alpha=alpha), "val")
        print(penalty, alpha, found[(penalty, alpha)])
    best = max(found, key=lambda key: found[key]["bleu"])
    test = scores(DecodeConfig(beam=args.beam, length_penalty=best[0], alpha=best[1]), "test_2016_flickr")
    default = scores(DecodeConfig(beam=args.beam), "test_2016_flickr")
    lines = [f"## {date.today()}: the length penalty, chosen on the validation set (issue 16)", "",
             f"Machine: {machine()}", "",
             f"Command: `python bench/length_penalty.py --run {args.run} --beam {args.beam}`", "",
             f"Beam {args.beam}, {args.src}-{args.tgt}, validation split (1,014 lines):", "",
             "| penalty | alpha | BLEU | chrF | length ratio | empty outputs |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for (penalty, alpha), r in found.items():
        mark = " (best)" if (penalty, alpha) == best else ""
        lines.append(f"| {penalty}{mark} | {alpha} | {r['bleu']:.2f} | {r['chrf']:.2f} | {r['ratio']:.3f} | "
                     f"{r['empty']} |")
    lines += ["", f"test_2016_flickr, scored once: the best on validation ({best[0]} {best[1]}) gives BLEU "
              f"{test['bleu']:.2f} (chrF {test['chrf']:.2f}); the default (gnmt 0.6) gives {default['bleu']:.2f} "
              f"(chrF {default['chrf']:.2f}).", ""]
    append_entry(lines)


if __name__ == "__main__":
    main()
