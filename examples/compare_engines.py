"""Compare engines of a sweep in pandas: the report's main table and its throughput plot, by hand.

    python examples/compare_engines.py outputs/multirun/2026-11-22/10-00-00 [throughput.png]
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

from runner.report import markdown, table  # noqa: E402  (after the backend is chosen)
from runner.results import compare, latest, load_results  # noqa: E402

sweep = sys.argv[1]
png = sys.argv[2] if len(sys.argv) > 2 else "throughput.png"

df = latest(load_results(sweep))  # one row per configuration and workload: its latest run, failed ones included
print(markdown(table(df)))  # report.md's main table

ok = df[df.status == "ok"]
groups = ok.groupby(["model_name", "workload"])  # numbers of different workloads are never one line
for i, ((model, work), runs) in enumerate(groups):
    tok_s = compare(runs, "output_tok_s")  # batch size x configuration
    print(f"\n{model}, {work}: output tok/s\n{tok_s.round(1).to_string()}")
    ax = tok_s.plot(marker="o", logx=True, title=f"output throughput: {model}, {work}", figsize=(7, 4.5))
    ax.set_xscale("log", base=2)
    ax.set_xticks(tok_s.index, labels=[str(b) for b in tok_s.index])
    ax.minorticks_off()
    ax.set_xlabel("batch size (log2 scale)")
    ax.set_ylabel("output tokens/s")
    path = png if groups.ngroups == 1 else Path(png).with_name(f"{i}-{Path(png).name}")
    ax.figure.savefig(path, dpi=110)
    print(f"plot: {path}")
