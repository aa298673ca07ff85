"""``fastq bench --plot``: messages/s per scenario (and peer) and the end-to-end latency
CDF, from a ``--json`` document, drawn with matplotlib (the optional ``plot`` extra)."""
from __future__ import annotations


def plot(doc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")   # files only, no display needed
    import matplotlib.pyplot as plt

    rows = [(s["name"], s["messages_per_s"], "fastq") for s in doc["scenarios"]]
    for p in doc["peers"]:
        if p["status"] != "ok":
            continue
        by = (p.get("extra") or {}).get("messages_per_s_by_scenario")
        if by:      # a queue peer: one bar per fastq scenario it is set beside
            rows += [(f"{p['name']} [{basis}]", rate, "peer") for basis, rate in by.items()]
        else:
            rows.append((p["name"], p["messages_per_s"], "peer"))
    curves = [(f"fastq {s['name']}", s["latency"]) for s in doc["scenarios"] if s.get("latency")]
    curves += [(p["name"], p["latency"]) for p in doc["peers"] if p["status"] == "ok" and p.get("latency")]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(4.0, 0.38 * len(rows) + 1.5)),
                                   gridspec_kw={"width_ratios": [1.2, 1]})
    names = [r[0] for r in rows][::-1]
    vals = [r[1] for r in rows][::-1]
    colors = ["#1f77b4" if r[2] == "fastq" else "#aaaaaa" for r in rows][::-1]
    bars = ax1.barh(names, vals, color=colors)
    ax1.set_xscale("log")
    ax1.set_xlabel("messages/s (log scale)")
    ax1.set_title(f"{doc['config']['size']}-byte messages (blue: fastq, grey: peers on the e2e workload, "
                  f"or the [queue] one)", fontsize=9)
    for b, v in zip(bars, vals):
        ax1.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {v:,.0f}", va="center", fontsize=7)
    ax1.margins(x=0.25)

    pct = list(range(101))
    for label, lat in curves:
        ax2.plot(lat["cdf_us"], pct, label=f"{label} ({lat['rate_per_s']:,}/s)")
    ax2.set_xscale("log")
    ax2.set_xlabel("end-to-end latency, µs (log scale)")
    ax2.set_ylabel("percentile")
    ax2.set_title("latency CDF, paced cross-process", fontsize=9)
    ax2.grid(True, which="both", alpha=0.3)
    if curves:
        ax2.legend(fontsize=7, loc="lower right")
    m = doc["machine"]
    fig.suptitle(f"fastq bench — {m['cpu_model']}, {m['cores']} cores, {m['os']}, Python {m['python']}, "
                 f"{doc['created'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
