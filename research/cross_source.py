"""Cross-source table: does adding another population's photos help a user's own?

One preset, one patient-level split of all its sources, and one training per subset of sources
(``train.sources``): each source alone, then all together. Each model chooses its grade cut-points and
referral threshold on the val photos of the sources it trained on (as its user would) and is tested on
every source's test photos. Each training is the named DVC experiment ``xs-<subset>`` (``xs-eyepacs``,
``xs-odir``, ``xs-all``), run with ``dvc exp run --temp``; the table reads each one's
``results/metrics.json`` back from its experiment ref, with the patient-bootstrap 95% CIs.

    python -m research.cross_source run                           # the preset: presets/real-cpu.yaml
    python -m research.cross_source run --subsets eyepacs odir    # some of them only
    python -m research.cross_source table --out docs/cross_source.md
    python -m research.cross_source table --as all=real-cpu       # a run of the whole preset stands for xs-all
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from dr_core.config.presets import read_preset, to_set_args

PRESET = Path("presets/real-cpu.yaml")
ALL = "all"
METRICS = (("referable_auc", "referable AUC"), ("qwk", "QWK"), ("referable_sensitivity", "sensitivity"),
           ("referable_specificity", "specificity"))


def subsets(preset: Path) -> list[str]:
    """Each source of the preset alone, then ``all``."""
    return [*read_preset(preset).get("data.sources", {}), ALL]


def run_args(preset: Path, subset: str) -> list[str]:
    """The ``dvc exp run`` command line of one training."""
    sources = "[]" if subset == ALL else f"[{subset}]"
    return ["dvc", "exp", "run", "--temp", "--name", f"xs-{subset}", "evaluate",
            *to_set_args(read_preset(preset), absolute=True, root=Path.cwd()), "-S", f"train.sources={sources}"]


def exp_ref(name: str) -> str:
    """The newest experiment ref named ``name`` (any baseline commit)."""
    out = subprocess.run(["git", "for-each-ref", "--sort=-creatordate", "--format=%(refname)", "refs/exps"],
                         capture_output=True, text=True, check=True).stdout.split()
    refs = [ref for ref in out if ref.rsplit("/", 1)[-1] == name]
    if not refs:
        raise SystemExit(f"no DVC experiment named {name!r}: run `python -m research.cross_source run` first")
    return refs[0]


def read_metrics(name: str) -> dict[str, Any]:
    import dvc.api

    return json.loads(dvc.api.read("results/metrics.json", repo=".", rev=exp_ref(name)))


def cell(block: Mapping[str, Any], key: str) -> str:
    value = block.get(key)
    if value is None:
        return "n/a"
    low, high = block.get(f"{key}_ci_low"), block.get(f"{key}_ci_high")
    ci = f" ({low:.2f}-{high:.2f})" if low is not None and high is not None else ""
    return f"{value:.3f}{ci}"


def table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per (trained on, tested on), each metric with its CI."""
    header = "| trained on | tested on | photos | " + " | ".join(label for _, label in METRICS) + " |"
    rows = [header, "|" + "---|" * (3 + len(METRICS))]
    for subset, metrics in results.items():
        test = metrics["test"]
        sources = [k for k, v in test.items() if isinstance(v, Mapping) and "referable_auc" in v]  # not per_class
        for source in sources:
            block = test[source]
            rows.append(f"| {subset} | {source} | {block.get('n_images')} | "
                        + " | ".join(cell(block, key) for key, _ in METRICS) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.cross_source", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and evaluate once per subset of sources (sequentially)")
    t = sub.add_parser("table", help="the markdown table from the experiments")
    for p in (r, t):
        p.add_argument("--preset", type=Path, default=PRESET)
        p.add_argument("--subsets", nargs="+", help="source names and/or 'all' (default: each source, then all)")
    t.add_argument("--as", dest="aliases", nargs="+", default=[], metavar="SUBSET=EXPERIMENT",
                   help="read a subset's figures from another experiment, e.g. all=real-cpu")
    t.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    chosen = args.subsets or subsets(args.preset)
    if args.cmd == "run":
        for subset in chosen:
            cmd = run_args(args.preset, subset)
            print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True)
        return 0
    aliases = dict(a.split("=", 1) for a in args.aliases)
    text = table({subset: read_metrics(aliases.get(subset, f"xs-{subset}")) for subset in chosen})
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
