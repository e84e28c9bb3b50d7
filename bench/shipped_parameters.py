"""How streams/linkage_parameters.json (the parameters a new deployment starts with) is made.

    python -m bench.shipped_parameters            # prints the weights; --write replaces the file

m (how often each comparison level occurs among true matches) is an error process: it is fitted
by EM on public data we did not make (FEBRL 2 and FEBRL 4, with typing, OCR and phonetic errors
and missing values). u and the name frequencies are properties of a population: they come from
the London population model (random pairs, never blocked ones). Sex is not in FEBRL, so its m
comes from the population model too. The prior (two random records being one person) is set
for an index of about 100,000 records. Once real data flows, fit everything to it with
`carebus estimate-linkage` (written to the data folder, never over this file).
"""
from __future__ import annotations

import argparse
from dataclasses import replace

from rich.console import Console

from bench.linkage_datasets import load
from carebus.linkage_report import print_report
from streams.fellegi_sunter import DEFAULT_PARAMETERS, Parameters, monotone
from streams.linkage_training import estimate_from

PRIOR = 1e-5


def shipped() -> Parameters:
    febrl = estimate_from(load("febrl2").records + load("febrl4").records)
    london = estimate_from(load("synthetic", people=20_000).records)
    m = {**febrl.m, "sex": london.m["sex"]}
    return monotone(replace(febrl, m=m, u=london.u, tf=london.tf, tf_floor=london.tf_floor, prevalence=PRIOR))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help=f"replace {DEFAULT_PARAMETERS}")
    args = parser.parse_args()
    params = shipped()
    print_report(params, Console(width=140))
    if args.write:
        DEFAULT_PARAMETERS.write_text(params.to_json())


if __name__ == "__main__":
    main()
