#!/usr/bin/env python3
"""Turn softfree's Google Benchmark JSON output into markdown tables and a log-log SVG plot.

    python3 bench/report.py RESULTS.json [MORE.json ...] --markdown OUT.md --plot OUT.svg
                            [--memory-plot OUT-memory.svg] [--dtype float] [--threads 1] [--threads-best]

Benchmark names must look like <method>/<dtype>/threads:<t>/N:<n>; other rows are ignored.
Each benchmark is represented by its best (minimum real_time) repetition.
Standard library only.

The markdown report has: a speed-up-vs-softmax summary (for --dtype/--threads), a
softfree-vs-peer summary per peer library present (1 thread), a summary of half and bfloat16
time relative to float (1 thread), one results table per dtype (the half and bfloat16 tables
add a 'time vs float' column, and every table a 'memory' column where rows carry the
peak_bytes counter) and, if fitted, a complexity table. --memory-plot draws peak bytes against
N (log-log, --dtype, 1 thread) beside the B*H*N^2 float score matrix of an unfused softmax.

Peer rows (other libraries timed at the same shapes, e.g. onednn-softmax) appear in the results
tables, the plot and the complexity table like any method, but never as softfree methods in the
speed-up-vs-softmax summary.
"""
import argparse
import html
import json
import math
import sys
from collections import defaultdict

BASELINE = "softmax"
PEERS = {"onednn-softmax": "oneDNN"}  # peer method -> the library's name in headings
DTYPES = ("float", "half", "bfloat16")
SCHEME = "<method>/<dtype>/threads:<t>/N:<n>"
UNIT_S = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}

# Plot styles: (colour, marker) for every method name the suite has, all colours distinct. A family
# keeps its marker shape; its +bf16 variant is the same shape hollow in a lighter shade, +alloc a
# cross, +bf16dot a plus. Unknown names fall back to EXTRA_COLOURS and the family shapes in turn.
STYLES = {
    "softmax": ("#000000", "circle"), "softmax+alloc": ("#7f7f7f", "cross"),
    "softmax+bf16": ("#525252", "circle-open"), "softmax+bf16dot": ("#b0b0b0", "plus"),
    "onednn-softmax": ("#bcbd22", "star"),
    "sima": ("#1f77b4", "square"), "sima+alloc": ("#393b79", "cross"),
    "sima+bf16": ("#6baed6", "square-open"), "sima+bf16dot": ("#6b6ecf", "plus"),
    "soft-gaussian": ("#d62728", "triangle"), "soft-gaussian+bf16": ("#ff9896", "triangle-open"),
    "soft-gaussian+bf16dot": ("#843c39", "plus"),
    "soft-nystrom-m49": ("#2ca02c", "diamond"), "soft-nystrom-m49+bf16": ("#98df8a", "diamond-open"),
    "soft-nystrom-m49+bf16dot": ("#637939", "plus"),
    "soft-nystrom-m64": ("#ff7f0e", "triangle-down"), "soft-nystrom-m64+bf16": ("#ffbb78", "triangle-down-open"),
    "soft-nystrom-m64+bf16dot": ("#e6550d", "plus"),
    "soft-nystrom-m49-untied": ("#9467bd", "pentagon"), "soft-nystrom-m49-untied+bf16": ("#c5b0d5", "pentagon-open"),
    "soft-nystrom-m49-untied+bf16dot": ("#7b4173", "plus"),
    "aft-full": ("#8c564b", "hexagon"), "aft-full+bf16": ("#c49c94", "hexagon-open"),
    "aft-full+bf16dot": ("#5c3a1e", "plus"),
    "aft-local-s32": ("#e377c2", "triangle-right"), "aft-simple": ("#17becf", "triangle-left"),
    "aft-conv-7x7": ("#8ca252", "star-open"),
}
EXTRA_COLOURS = ("#e7ba52", "#ad494a", "#a55194", "#31a354", "#3182bd", "#fd8d3c", "#756bb1", "#636363")
SHAPES = ("circle", "square", "triangle", "diamond", "triangle-down", "pentagon", "hexagon",
          "triangle-right", "triangle-left", "star")
REFERENCE_COLOUR = "#d4a017"  # the N^2 score-matrix line of the memory plot, dashed, no markers


# ---------------------------------------------------------------- parsing

def parse_name(name, need_n=True):
    """'method/dtype/threads:t/N:n' -> (method, dtype, t, n), or None if it does not match.

    Extra Google Benchmark suffixes (real_time, min_time:...) are ignored;
    need_n=False accepts the N-less run names of BigO/RMS rows.
    """
    parts = name.split("/")
    if len(parts) < 2 or not parts[0] or parts[1] not in DTYPES:
        return None
    kv = dict(p.split(":", 1) for p in parts[2:] if ":" in p)
    if "B" in kv or "H" in kv:  # a row of another shape than the suite's (parse_shape_name)
        return None
    try:
        n = int(kv["N"]) if need_n else None
        return parts[0], parts[1], int(kv.get("threads", 1)), n
    except (KeyError, ValueError):
        return None


def parse_shape_name(name):
    """'method/dtype/threads:t/B:b/H:h/N:n' (the suite's other shapes) -> (method, dtype, t, (b, h, n)), or None."""
    parts = name.split("/")
    if len(parts) < 2 or not parts[0] or parts[1] not in DTYPES:
        return None
    kv = dict(p.split(":", 1) for p in parts[2:] if ":" in p)
    try:
        return parts[0], parts[1], int(kv.get("threads", 1)), (int(kv["B"]), int(kv["H"]), int(kv["N"]))
    except (KeyError, ValueError):
        return None


def seconds(b, field="real_time"):
    """A time field of a benchmark row, in seconds."""
    return b[field] * UNIT_S[b.get("time_unit", "ns")]


def load(paths):
    """Read JSON files -> (rows, complexity, context) (load_all without the other shapes)."""
    return load_all(paths)[:3]


def load_all(paths):
    """Read JSON files -> (rows, complexity, context, shaped).

    rows: {(method, dtype, threads, N): dict(t, gflops, peak, tok, reps, src, mem)} using the
    fastest 'iteration' row (falls back to the median/mean aggregate if only aggregates
    were reported); mem is the peak_bytes counter (None where the row has none).
    complexity: {(method, dtype, threads): {'BigO': row, 'RMS': row}}.
    shaped: as rows, for the other shapes, keyed (method, dtype, threads, (B, H, N)).
    """
    groups, cplx, ctx = defaultdict(list), defaultdict(dict), {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            sys.exit(f"report.py: cannot read {path}: {e}")
        ctx = ctx or doc.get("context", {})
        for b in doc.get("benchmarks", []):
            if b.get("error_occurred"):
                continue
            name, agg = b.get("run_name", b.get("name", "")), b.get("aggregate_name")
            if agg in ("BigO", "RMS"):
                key = parse_name(name, need_n=False)
                if key:
                    cplx[key[:3]][agg] = b
            elif "real_time" in b:
                key = parse_name(name) or parse_shape_name(name)
                if key:
                    groups[key].append(b)
    rows, shaped = {}, {}
    for key, bs in groups.items():
        its = [b for b in bs if b.get("run_type", "iteration") == "iteration"]
        pool = (its or [b for b in bs if b.get("aggregate_name") == "median"]
                or [b for b in bs if b.get("aggregate_name") == "mean"])
        if pool:
            best = min(pool, key=seconds)
            mem = [b["peak_bytes"] for b in [best] + bs if b.get("peak_bytes") is not None]
            (shaped if isinstance(key[3], tuple) else rows)[key] = dict(
                t=seconds(best), gflops=best.get("GFLOPS"), peak=best.get("peak_pct"),
                tok=best.get("tokens_per_s"), reps=len(its),
                src="best" if its else best["aggregate_name"], mem=mem[0] if mem else None)
    return rows, dict(cplx), ctx, shaped


# ------------------------------------------------------------- formatting

def sig3(x):
    """x with 3 significant digits in plain notation (41.2, 1.00, 0.0123, 1230)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    digits = 2 - math.floor(math.log10(abs(float(f"{x:.3g}"))))
    return f"{x:.{max(digits, 0)}f}"


def fmt_time(s):
    """Seconds -> '19.2 us' / '1.23 ms' / '2.50 s' (3 significant digits)."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if float(f"{s / scale:.3g}") >= 1 or unit == "ns":
            return f"{sig3(s / scale)} {unit}"


def fmt_eng(x):
    """Engineering notation with SI prefix: 10253916 -> '10.3M'."""
    if x is None:
        return "—"
    exp = 0
    while abs(x) >= 999.5 and exp < 12:
        x, exp = x / 1000, exp + 3
    return sig3(x) + {0: "", 3: "k", 6: "M", 9: "G", 12: "T"}[exp]


def fmt_bytes(x):
    """Bytes in binary units, 3 significant digits: 0 -> '0 B', 1536 -> '1.50 KiB'; None -> 'n/c'
    (not counted: the row has no peak_bytes counter)."""
    if x is None:
        return "n/c"
    for unit, scale in (("GiB", 2.0 ** 30), ("MiB", 2.0 ** 20), ("KiB", 2.0 ** 10)):
        if float(f"{x / scale:.3g}") >= 1:
            return f"{sig3(x / scale)} {unit}"
    return f"{x:.0f} B"


def fmt_opt(x, suffix=""):
    """sig3(x) + suffix, or an em dash for a missing value."""
    return "—" if x is None else sig3(x) + suffix


def is_peer(m):
    """Whether a method is another library's (a peer row), not softfree's."""
    return m.split("+")[0] in PEERS


def method_key(m):
    """Sort key: softmax (and its +alloc variant) first, then the peers, then the rest;
    variants after their base method."""
    base = m.split("+")[0]
    return (0 if base == BASELINE else 1 if is_peer(m) else 2), base, m


def md_table(header, align, body):
    """Markdown table; align is a string of 'l'/'r' per column."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


# --------------------------------------------------------------- markdown

def speedup(rows, key):
    """softmax time / this row's time at the same dtype, threads and N (None if no softmax)."""
    base = rows.get((BASELINE,) + key[1:])
    return base["t"] / rows[key]["t"] if base else None


def vs_float(rows, key):
    """This row's time / the float row's time at the same method, threads and N (None if no float row)."""
    ref = rows.get((key[0], "float") + key[2:])
    return rows[key]["t"] / ref["t"] if ref else None


def reps_note(rows, rel=False):
    """How each row's time was chosen and what the ratio columns mean (rel: the 'time vs float' column)."""
    counts = sorted({r["reps"] for r in rows if r["src"] == "best"})
    if not counts:
        how = "the median aggregate (no per-repetition rows were reported)"
    elif counts == [1]:
        how = "a single repetition"
    else:
        k = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        how = f"the best (minimum real_time) of {k} repetitions — the machine is shared and noisy"
        if any(r["src"] != "best" for r in rows):
            how += " (median aggregate where only aggregates were reported)"
    note = f"_Each row is {how}. Speed-up = softmax time ÷ row time at the same dtype, threads and N."
    if rel:
        note += " Time vs float = row time ÷ float time at the same method, threads and N."
    return note + "_"


def results_table(rows, dtype):
    """Per-dtype results table plus its note; non-float tables get a 'time vs float' column."""
    keys = sorted((k for k in rows if k[1] == dtype), key=lambda k: (method_key(k[0]), k[2], k[3]))
    multi = {k[2] for k in keys} - {1}
    peak = any(rows[k]["peak"] is not None for k in keys)
    mem = any(rows[k].get("mem") is not None for k in keys)
    rel = dtype != "float"
    header = ["method", "threads", "N", "time", "GFLOP/s"] + (["% of peak"] if peak else []) \
        + ["tokens/s", "speed-up vs softmax"] + (["memory"] if mem else []) + (["time vs float"] if rel else [])
    if multi:
        header.append("2-thread scaling" if multi == {2} else "scaling vs 1 thread")
    body = []
    for k in keys:
        r = rows[k]
        cells = [k[0], str(k[2]), str(k[3]), fmt_time(r["t"]), fmt_opt(r["gflops"])]
        cells += [fmt_opt(r["peak"], "%")] if peak else []
        cells += [fmt_eng(r["tok"]), fmt_opt(speedup(rows, k), "x")]
        cells += [fmt_bytes(r.get("mem"))] if mem else []
        if rel:
            ratio = vs_float(rows, k)
            cells.append("" if ratio is None else sig3(ratio) + "x")
        if multi:
            one = rows.get((k[0], dtype, 1, k[3]))
            cells.append("" if k[2] == 1 else fmt_opt(one and one["t"] / r["t"], "x"))
        body.append(cells)
    align = "lrrrr" + "".join("r" for on in (peak, True, True, mem, rel, multi) if on)
    note = reps_note([rows[k] for k in keys], rel)
    return md_table(header, align, body) + "\n\n" + note + ("\n\n" + MEMORY_NOTE if mem else "")


MEMORY_NOTE = ("_Memory = the most the library held at once (its workspaces, on all threads, and any cache "
               "a functor builds on its first call) during the row's first, untimed call of the "
               "write-into-`out` form, counted by the bench's operator new hook; the inputs and the output "
               "tensor, allocated before, are not included (an `+alloc` row shows the same call). n/c = not "
               "counted: the row's library allocates outside operator new (oneDNN's scratchpads)._")


def complexity_table(cplx):
    """Method/dtype/threads -> fitted big-O, real-time coefficient, RMS."""
    body = []
    for key in sorted(cplx, key=lambda k: (method_key(k[0]), DTYPES.index(k[1]), k[2])):
        big, rms = cplx[key].get("BigO", {}), cplx[key].get("RMS", {})
        o = big.get("big_o", "?")
        coef = big.get("real_coefficient")
        body.append([key[0], key[1], str(key[2]),
                     o if o.startswith("f") else "O" + (o if o.startswith("(") else f"({o})"),
                     "—" if coef is None else fmt_time(seconds(big, "real_coefficient")),
                     fmt_opt(rms.get("rms") and rms["rms"] * 100, "%")])
    return md_table(["method", "dtype", "threads", "big O", "coefficient", "RMS"], "lllllr", body)


def series(rows, dtype, threads, threads_best=False):
    """{method: {N: seconds}} for one dtype and thread count (or the fastest thread count)."""
    out = defaultdict(dict)
    for (m, d, t, n), r in rows.items():
        if d == dtype and (threads_best or t == threads):
            out[m][n] = min(r["t"], out[m].get(n, math.inf))
    return {m: out[m] for m in sorted(out, key=method_key)}


def selection_label(dtype, threads, threads_best):
    """'float, 1 thread' style caption."""
    if threads_best:
        return f"{dtype}, fastest thread count"
    return f"{dtype}, {threads} thread" + ("s" if threads != 1 else "")


def summary_table(ser):
    """Rows = softfree methods (not the baseline, not peers), columns = N, cells = speed-up vs softmax."""
    ns = sorted({n for s in ser.values() for n in s})
    base = ser.get(BASELINE, {})
    body = [[m] + [fmt_opt(base[n] / s[n] if n in base and n in s else None, "x") for n in ns]
            for m, s in ser.items() if m != BASELINE and not is_peer(m)]
    return md_table(["method"] + [f"N={n}" for n in ns], "l" + "r" * len(ns), body)


def peer_table(rows, peer, threads=1):
    """Rows = softfree methods, columns = (dtype, N) where the peer ran, cells = peer time ÷ method
    time (the speed-up of softfree's method over the peer); None if the peer has no rows."""
    ref = {d: series(rows, d, threads).get(peer, {}) for d in DTYPES}
    cols = [(d, n) for d in DTYPES for n in sorted(ref[d])]
    if not cols:
        return None
    sers = {d: series(rows, d, threads) for d in DTYPES}
    methods = sorted({m for ser in sers.values() for m in ser if not is_peer(m)}, key=method_key)
    cell = lambda m, d, n: fmt_opt(ref[d][n] / sers[d][m][n] if n in sers[d].get(m, {}) else None, "x")
    body = [[m] + [cell(m, d, n) for d, n in cols] for m in methods]
    return md_table(["method"] + [f"{d} N={n}" for d, n in cols], "l" + "r" * len(cols), body)


def precision_table(rows, threads=1):
    """Rows = methods, columns = (half/bfloat16, N), cells = time(dtype) / time(float); None if no ratio."""
    ref = series(rows, "float", threads)
    sers = {d: series(rows, d, threads) for d in DTYPES if d != "float"}
    cols = [(d, n) for d, ser in sers.items() for n in sorted({n for s in ser.values() for n in s})]
    methods = sorted({m for ser in sers.values() for m in ser}, key=method_key)
    ratio = lambda m, d, n: (sers[d][m][n] / ref[m][n]
                             if n in sers[d].get(m, {}) and n in ref.get(m, {}) else None)
    if not any(ratio(m, d, n) is not None for m in methods for d, n in cols):
        return None
    body = [[m] + [fmt_opt(ratio(m, d, n), "x") for d, n in cols] for m in methods]
    return md_table(["method"] + [f"{d} N={n}" for d, n in cols], "l" + "r" * len(cols), body)


# context key -> what it tells (softfree_bench records them; older results lack them)
BACKEND_CONTEXT = (("kernel_isa", "kernels compiled for"),
                   ("products_bfloat16", "bfloat16 storage products"),
                   ("products_float_math_bf16", "float storage, math = bf16"),
                   ("cpu_avx512_bf16", "CPU AVX512-BF16"), ("cpu_amx_bf16", "CPU AMX-BF16"),
                   ("fma_peak_gflops_per_core", "float FMA peak, GFLOP/s per core"),
                   ("bf16_dot_peak_gflops_per_core", "vdpbf16ps peak, GFLOP/s per core"))


def backends_section(ctx):
    """The product backends the run used (each row's label names its own), from the context."""
    items = [f"- {what}: {ctx[key]}" for key, what in BACKEND_CONTEXT if key in ctx]
    if not items:
        return []
    return ["## Backends", ""] + items + ["", "_Rows `<method>+bf16` run float storage with math = bf16; "
                                          "`<method>+bf16dot` force the AVX512-BF16 pair products where the "
                                          "selection rule does not pick them (bfloat16 storage)._", ""]


def shapes_table(shaped):
    """The other shapes: per method, dtype and shape, the time on 1 and 2 threads and their ratio."""
    keys = sorted({k[:2] + (k[3],) for k in shaped}, key=lambda k: (k[2], method_key(k[0]), k[1]))
    body = []
    for m, d, shape in keys:
        one, two = shaped.get((m, d, 1, shape)), shaped.get((m, d, 2, shape))
        base = shaped.get((BASELINE, d, 1, shape))
        body.append([m, d, "B={} H={} N={}".format(*shape), fmt_time(one["t"]) if one else "–",
                     fmt_time(two["t"]) if two else "–",
                     sig3(one["t"] / two["t"]) + "x" if one and two else "–",
                     sig3(base["t"] / one["t"]) + "x" if one and base else "–"])
    return md_table(["method", "dtype", "shape", "1 thread", "2 threads", "2 threads ÷ 1", "speed-up vs softmax (1 thread)"],
                    "lllrrrr", body)


def markdown(rows, cplx, ctx, dtype="float", threads=1, threads_best=False, shaped=None):
    """The whole markdown report."""
    out = ["# softfree attention benchmarks", ""]
    if ctx:
        load_avg = " ".join(f"{x:.2f}" for x in ctx.get("load_avg", []))
        out += [f"_Run {ctx.get('date', '?')} on {ctx.get('host_name', '?')}: "
                f"{ctx.get('num_cpus', '?')} CPUs @ {ctx.get('mhz_per_cpu', '?')} MHz"
                + (f", load avg {load_avg}" if load_avg else "")
                + (", CPU frequency scaling enabled" if ctx.get("cpu_scaling_enabled") else "")
                + "._", ""]
        out += backends_section(ctx)
    label = selection_label(dtype, threads, threads_best)
    ser = series(rows, dtype, threads, threads_best)
    out += [f"## Speed-up vs softmax ({label})", "", summary_table(ser), ""]
    peers = sorted(m for m in ser if is_peer(m))
    if peers:
        libs = sorted({PEERS[m.split("+")[0]] for m in peers})
        out += [f"_Not listed: {', '.join(peers)} (peer rows, another library's; "
                f"see softfree vs {' / '.join(libs)} below)._", ""]
    for peer, lib in PEERS.items():
        table = peer_table(rows, peer)
        if table:
            out += [f"## softfree vs {lib} (1 thread)", "", table, "",
                    f"_Cell = {peer} time ÷ method time at the same dtype and N: above 1.00x softfree's "
                    f"method is faster than {lib}'s softmax attention._", ""]
    prec = precision_table(rows)
    if prec:
        out += ["## Half and bfloat16 time relative to float (1 thread)", "", prec, "",
                "_Cell = time ÷ float time for the same method and N; below 1.00x the narrower storage is faster._",
                ""]
    for d in DTYPES:
        if any(k[1] == d for k in rows):
            out += [f"## Results: {d}", "", results_table(rows, d), ""]
    if shaped:
        out += ["## Other shapes (D = 64)", "", shapes_table(shaped), "",
                "_One head at N = 16384, where a second thread helps only by splitting the tokens, and a "
                "DeiT-S batch. 2 threads ÷ 1 = one-thread time ÷ two-thread time._", ""]
    if cplx:
        out += ["## Complexity (fit of real time vs N)", "", complexity_table(cplx), ""]
    return "\n".join(out)


# -------------------------------------------------------------------- svg

def decades(vals):
    """Enclosing decade range (lo, hi) of positive values, hi > lo."""
    lo = math.floor(math.log10(min(vals)))
    return lo, max(math.ceil(math.log10(max(vals))), lo + 1)


def tick_label(v):
    """Compact axis label for a tick value: 0.01, 200, 1e+06 -> 1e6."""
    return f"{v:g}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")


def style(m, others=()):
    """(colour, marker) of method m; others: the plot's method names without a fixed style, in
    order, whose position picks the fallback."""
    if m in STYLES:
        return STYLES[m]
    i = list(others).index(m) if m in others else 0
    return EXTRA_COLOURS[i % len(EXTRA_COLOURS)], SHAPES[i % len(SHAPES)]


def polygon(x, y, k, r, turn=0.0, inner=None):
    """Points of a regular k-gon (a k-point star with inner radius) of radius r around (x, y)."""
    pts, step = [], math.pi / k if inner else 2 * math.pi / k
    for j in range(2 * k if inner else k):
        a = -math.pi / 2 + turn + j * step
        rr = inner if inner and j % 2 else r
        pts.append(f"{x + rr * math.cos(a):.1f},{y + rr * math.sin(a):.1f}")
    return " ".join(pts)


def marker(shape, x, y, colour):
    """Marker `shape` (from STYLES / SHAPES; '-open' hollow) centred at (x, y), as SVG."""
    hollow = shape.endswith("-open")
    base = shape[:-5] if hollow else shape
    paint = f'fill="white" stroke="{colour}" stroke-width="1.4"' if hollow else f'fill="{colour}"'
    if base in ("cross", "plus"):
        d = 3.8 if base == "cross" else 4.8
        segs = ((-d, -d, d, d), (-d, d, d, -d)) if base == "cross" else ((-d, 0, d, 0), (0, -d, 0, d))
        return "".join(f'<line x1="{x + a:.1f}" y1="{y + b:.1f}" x2="{x + c:.1f}" y2="{y + e:.1f}" '
                       f'stroke="{colour}" stroke-width="2"/>' for a, b, c, e in segs)
    if base == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.6" {paint}/>'
    if base == "square":
        return f'<rect x="{x - 3.4:.1f}" y="{y - 3.4:.1f}" width="6.8" height="6.8" {paint}/>'
    k, r, turn, inner = {"triangle": (3, 5, 0, None), "triangle-down": (3, 5, math.pi, None),
                         "triangle-right": (3, 5, math.pi / 2, None), "triangle-left": (3, 5, -math.pi / 2, None),
                         "diamond": (4, 5, 0, None), "pentagon": (5, 4.6, 0, None), "hexagon": (6, 4.4, 0, None),
                         "star": (5, 5.6, 0, 2.4)}[base]
    return f'<polygon points="{polygon(x, y, k, r, turn, inner)}" {paint}/>'


def svg_axes(out, L, T, PW, PH, xr, yr, X, Y, ylabel):
    """Log grid, tick labels, frame and axis titles of a plot, appended to out."""
    for (lo, hi), axis in ((xr, "x"), (yr, "y")):
        for d in range(lo, hi + 1):
            for m in ((1,) if d == hi else range(1, 10)):
                v, major = m * 10.0 ** d, m == 1
                grid = 'stroke="#b0b0b0"' if major else 'stroke="#ececec"'
                labelled = major or (hi - lo <= 2 and m in (2, 5))
                fill = "" if major else ' fill="#666"'
                if axis == "x":
                    x = X(v)
                    out.append(f'<line x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{T + PH}" {grid}/>')
                    if labelled:
                        out.append(f'<text x="{x:.1f}" y="{T + PH + 18}" text-anchor="middle"{fill}>'
                                   f'{tick_label(v)}</text>')
                else:
                    y = Y(v)
                    out.append(f'<line x1="{L}" y1="{y:.1f}" x2="{L + PW}" y2="{y:.1f}" {grid}/>')
                    if labelled:
                        out.append(f'<text x="{L - 8}" y="{y + 4:.1f}" text-anchor="end"{fill}>'
                                   f'{tick_label(v)}</text>')
    out += [f'<rect x="{L}" y="{T}" width="{PW}" height="{PH}" fill="none" stroke="#333"/>',
            f'<text x="{L + PW / 2}" y="{T + PH + 42}" text-anchor="middle" font-size="13">sequence length N</text>',
            f'<text transform="translate(22 {T + PH / 2}) rotate(-90)" text-anchor="middle" font-size="13">'
            f'{html.escape(ylabel)}</text>']


def svg_plot(ser, title, ylabel="time per call (ms)", scale=1e3, reference=None):
    """Log-log plot of value * scale vs N, one polyline per method (its own colour and marker,
    peers dashed), as SVG text. reference: (label, {N: value}), drawn dashed without markers."""
    esc = html.escape
    names = list(ser) + ([reference[0]] if reference else [])
    L, T, PW, PH = 80, 50, 560, 380
    LX = L + PW + 34  # legend column, clear of the last x tick label
    legend_w = 88 + 7.5 * max([len(m) for m in names] + [8])
    W, H = L + PW + legend_w, max(T + PH + 60, T + 20 * len(names) + 20)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L + PW / 2}" y="28" text-anchor="middle" font-size="15" font-weight="bold">{esc(title)}</text>']
    curves = list(ser.values()) + ([reference[1]] if reference else [])
    pts = [(n, v * scale) for s in curves for n, v in s.items() if n > 0 and v > 0]
    if not pts:
        out.append(f'<text x="{L + PW / 2}" y="{T + PH / 2}" text-anchor="middle">no data</text>')
        return "\n".join(out + ["</svg>"]) + "\n"
    (x0, x1), (y0, y1) = decades([p[0] for p in pts]), decades([p[1] for p in pts])
    X = lambda v: L + (math.log10(v) - x0) / (x1 - x0) * PW
    Y = lambda v: T + PH - (math.log10(v) - y0) / (y1 - y0) * PH
    svg_axes(out, L, T, PW, PH, (x0, x1), (y0, y1), X, Y, ylabel)
    others = [m for m in ser if m not in STYLES]
    for i, (m, s) in enumerate(ser.items()):
        c, shape = style(m, others)
        xy = [(X(n), Y(v * scale)) for n, v in sorted(s.items()) if n > 0 and v > 0]
        dash = ' stroke-dasharray="6 3"' if is_peer(m) else ""  # peers dashed
        out.append(f'<polyline fill="none" stroke="{c}"{dash} stroke-width="{2.2 if m == BASELINE else 1.6}" points="'
                   + " ".join(f"{x:.1f},{y:.1f}" for x, y in xy) + '"/>')
        out += [marker(shape, x, y, c) for x, y in xy]
        ly = T + 10 + 20 * i
        out += [f'<line x1="{LX}" y1="{ly}" x2="{LX + 28}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/>',
                marker(shape, LX + 14, ly, c),
                f'<text x="{LX + 36}" y="{ly + 4}">{esc(m)}</text>']
    if reference:
        xy = [(X(n), Y(v * scale)) for n, v in sorted(reference[1].items()) if n > 0 and v > 0]
        ly, c = T + 10 + 20 * len(ser), REFERENCE_COLOUR
        out += [f'<polyline fill="none" stroke="{c}" stroke-dasharray="2 3" stroke-width="2.2" points="'
                + " ".join(f"{x:.1f},{y:.1f}" for x, y in xy) + '"/>',
                f'<line x1="{LX}" y1="{ly}" x2="{LX + 28}" y2="{ly}" stroke="{c}" '
                f'stroke-dasharray="2 3" stroke-width="2.2"/>',
                f'<text x="{LX + 36}" y="{ly + 4}">{esc(reference[0])}</text>']
    return "\n".join(out + ["</svg>"]) + "\n"


def memory_series(rows, dtype, threads=1):
    """{method: {N: peak bytes}} for one dtype and thread count, rows with the counter only;
    +alloc rows are left out (they measure the same call as their method's row)."""
    out = defaultdict(dict)
    for (m, d, t, n), r in rows.items():
        if d == dtype and t == threads and r.get("mem") is not None and not m.endswith("+alloc"):
            out[m][n] = r["mem"]
    return {m: out[m] for m in sorted(out, key=method_key)}


def suite_shape(ctx):
    """(B, H) from the context's 'shape' entry ('B=1 H=6 D=64'); the suite's (1, 6) if absent."""
    kv = dict(p.split("=", 1) for p in ctx.get("shape", "").split() if "=" in p)
    try:
        return int(kv.get("B", 1)), int(kv.get("H", 6))
    except ValueError:
        return 1, 6


def score_matrix(ns, ctx):
    """(label, {N: bytes}) of the float N x N score matrix per head an unfused softmax holds."""
    b, h = suite_shape(ctx)
    return f"N² float scores (B={b}, H={h})", {n: 4.0 * b * h * n * n for n in ns}


# ------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="Google Benchmark JSON file(s) (--benchmark_out_format=json)")
    ap.add_argument("--markdown", metavar="OUT.md", help="write the markdown report here (also printed)")
    ap.add_argument("--plot", metavar="OUT.svg", help="write the log-log SVG plot here")
    ap.add_argument("--memory-plot", metavar="OUT.svg",
                    help="write the log-log SVG plot of peak bytes vs N here (--dtype, 1 thread)")
    ap.add_argument("--dtype", default="float", choices=DTYPES, help="dtype for plot and summary (float)")
    ap.add_argument("--threads", type=int, default=1, help="thread count for plot and summary (1)")
    ap.add_argument("--threads-best", action="store_true",
                    help="plot and summary use the fastest thread count per method and N")
    a = ap.parse_args(argv)
    rows, cplx, ctx, shaped = load_all(a.results)
    if not rows:
        sys.exit(f"report.py: no benchmark rows named {SCHEME} in {', '.join(a.results)}")
    md = markdown(rows, cplx, ctx, a.dtype, a.threads, a.threads_best, shaped)
    print(md)
    if a.markdown:
        with open(a.markdown, "w", encoding="utf-8") as f:
            f.write(md)
    if a.plot:
        ser = series(rows, a.dtype, a.threads, a.threads_best)
        if not ser:
            print(f"report.py: warning: no rows for the plot ({a.dtype}, threads {a.threads})", file=sys.stderr)
        reps = max(r["reps"] for r in rows.values())
        title = f"Attention time vs N ({selection_label(a.dtype, a.threads, a.threads_best)}"
        title += f", best of {reps})" if reps > 1 else ")"
        with open(a.plot, "w", encoding="utf-8") as f:
            f.write(svg_plot(ser, title))
    if a.memory_plot:
        mem = memory_series(rows, a.dtype)
        if not mem:
            print(f"report.py: warning: no peak_bytes counters for the memory plot ({a.dtype}, 1 thread)",
                  file=sys.stderr)
        ns = sorted({n for s in mem.values() for n in s})
        with open(a.memory_plot, "w", encoding="utf-8") as f:
            title = f"Peak bytes a call allocates vs N ({a.dtype}, 1 thread)"
            f.write(svg_plot(mem, title, "peak bytes allocated (MiB)", 2.0 ** -20, score_matrix(ns, ctx)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
