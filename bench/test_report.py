#!/usr/bin/env python3
"""Self-test for bench/report.py on a synthetic Google Benchmark 1.7.1 JSON file.

Run: python3 bench/test_report.py
"""
import contextlib
import io
import json
import os
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

# per-call seconds at N for one thread: softmax quadratic, the rest linear
MODELS = {"softmax": lambda n: 1e-9 * n * n, "softmax+alloc": lambda n: 1.1e-9 * n * n,
          "sima": lambda n: 2e-7 * n, "soft-nystrom-m49": lambda n: 5e-7 * n,
          "aft-local-s32": lambda n: 3e-7 * n}
NS = (197, 1024, 4096)
# every method name softfree_bench --benchmark_list_tests gives (on an AVX512-BF16 machine, with oneDNN)
SUITE_METHODS = ("aft-conv-7x7", "aft-full", "aft-full+bf16", "aft-full+bf16dot", "aft-local-s32", "aft-simple",
                 "onednn-softmax", "sima", "sima+alloc", "sima+bf16", "sima+bf16dot", "soft-gaussian",
                 "soft-gaussian+bf16", "soft-gaussian+bf16dot", "soft-nystrom-m49", "soft-nystrom-m49+bf16",
                 "soft-nystrom-m49+bf16dot", "soft-nystrom-m49-untied", "soft-nystrom-m49-untied+bf16",
                 "soft-nystrom-m49-untied+bf16dot", "soft-nystrom-m64", "soft-nystrom-m64+bf16",
                 "soft-nystrom-m64+bf16dot", "softmax", "softmax+alloc", "softmax+bf16", "softmax+bf16dot")


def row(name, secs, unit="us", **extra):
    """One 'iteration' row, shaped like Google Benchmark 1.7.1's JSON reporter output."""
    r = {"name": name, "family_index": 0, "per_family_instance_index": 0, "run_name": name,
         "run_type": "iteration", "repetitions": 3, "repetition_index": 0, "threads": 1,
         "iterations": 100, "real_time": secs / report.UNIT_S[unit], "cpu_time": secs / report.UNIT_S[unit],
         "time_unit": unit, "GFLOPS": 10.0, "tokens_per_s": 1.0e6, "peak_pct": 20.0}
    r.update(extra)
    return r


def aggregate(name, agg, secs, unit="us"):
    """A mean/median/stddev/cv aggregate row (must be ignored when iteration rows exist)."""
    return row(name + "_" + agg, secs, unit, run_name=name, run_type="aggregate", aggregate_name=agg,
               aggregate_unit="percentage" if agg == "cv" else "time")


def synthetic():
    """Benchmarks for 5 methods x {float, half} x {1, 2 threads} x 3 N, 3 repetitions each."""
    rows = []
    for method, model in MODELS.items():
        for dtype in ("float", "half"):
            for t in (1, 2):
                if dtype == "half" and t == 2:
                    continue
                for n in NS:
                    name = f"{method}/{dtype}/threads:{t}/N:{n}"
                    base = model(n) / (1.6 if t == 2 else 1) * (0.8 if dtype == "half" else 1)
                    unit = "ms" if method == "softmax" else "us"  # mixed units on purpose
                    for i, factor in enumerate((1.3, 1.0, 1.1)):  # best is the middle repetition
                        rows.append(row(name, base * factor, unit, repetition_index=i,
                                        tokens_per_s=n / (base * factor)))
                    rows += [aggregate(name, "mean", base * 1.13, unit), aggregate(name, "median", base * 1.1, unit),
                             aggregate(name, "stddev", base * 0.01, unit), aggregate(name, "cv", 0.1, unit)]
                run = f"{method}/{dtype}/threads:{t}"
                rows += [{"name": run + "_BigO", "run_name": run, "run_type": "aggregate", "aggregate_name": "BigO",
                          "aggregate_unit": "time", "cpu_coefficient": 1.0, "real_coefficient": 1.0,
                          "big_o": "N^2" if method.startswith("softmax") else "N", "time_unit": "ns"},
                         {"name": run + "_RMS", "run_name": run, "run_type": "aggregate", "aggregate_name": "RMS",
                          "aggregate_unit": "percentage", "rms": 0.0123}]
    # the other shapes (B:/H: in the name): one head at N = 16384 on 1 and 2 threads, softmax and sima
    for method, secs in (("softmax", 0.2), ("sima", 0.004)):
        for t in (1, 2):
            rows.append(row(f"{method}/float/threads:{t}/B:1/H:1/N:16384", secs / (1.9 if t == 2 else 1), "ms"))
    rows.append(row("BM_unrelated/64", 1e-6))
    rows.append(row("sima/float/threads:1/N:8192", 0.0, error_occurred=True, error_message="oom"))
    return {"context": {"date": "2024-01-01T00:00:00", "host_name": "test", "num_cpus": 2,
                        "mhz_per_cpu": 2600, "load_avg": [0.5, 0.4, 0.3]}, "benchmarks": rows}


class ReportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.json = os.path.join(cls.tmp.name, "results.json")
        with open(cls.json, "w") as f:
            json.dump(synthetic(), f)
        cls.rows, cls.cplx, cls.ctx = report.load([cls.json])

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_main(self, *args):
        """Run report.main, returning (exit code, stdout, markdown file, svg file)."""
        md, svg = os.path.join(self.tmp.name, "out.md"), os.path.join(self.tmp.name, "out.svg")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = report.main([self.json, "--markdown", md, "--plot", svg, *args])
        with open(md, encoding="utf-8") as f, open(svg, encoding="utf-8") as g:
            return rc, out.getvalue(), f.read(), g.read()

    def test_parse_name(self):
        self.assertEqual(report.parse_name("soft-nystrom-m49/bfloat16/threads:1/N:197"),
                         ("soft-nystrom-m49", "bfloat16", 1, 197))
        self.assertEqual(report.parse_name("sima+alloc/half/threads:2/N:4096"), ("sima+alloc", "half", 2, 4096))
        self.assertEqual(report.parse_name("softmax/float/threads:1", need_n=False), ("softmax", "float", 1, None))
        for bad in ("BM_unrelated/64", "softmax/double/threads:1/N:8", "softmax/float/threads:1", "x/float/N:abc"):
            self.assertIsNone(report.parse_name(bad), bad)

    def test_best_repetition_and_units(self):
        r = self.rows[("softmax", "float", 1, 1024)]
        self.assertAlmostEqual(r["t"], 1e-9 * 1024 ** 2)  # min of 3 repetitions, ms converted
        self.assertEqual((r["reps"], r["src"]), (3, "best"))
        self.assertAlmostEqual(self.rows[("sima", "float", 1, 197)]["t"], 2e-7 * 197)
        self.assertEqual(len(self.rows), 5 * 3 * 3)  # unrelated and error rows dropped
        self.assertEqual(self.cplx[("sima", "half", 1)]["BigO"]["big_o"], "N")

    def test_other_shapes(self):
        self.assertIsNone(report.parse_name("sima/float/threads:2/B:1/H:1/N:16384"))  # not a suite row
        self.assertEqual(report.parse_shape_name("sima/float/threads:2/B:1/H:1/N:16384"),
                         ("sima", "float", 2, (1, 1, 16384)))
        shaped = report.load_all([self.json])[3]
        self.assertEqual(len(shaped), 4)
        _, _, md, _ = self.run_main()
        self.assertIn("## Other shapes (D = 64)", md)
        self.assertIn("| sima | float | B=1 H=1 N=16384 | 4.00 ms | 2.11 ms | 1.90x | 50.0x |", md)
        self.assertNotIn("| sima | 1 | 16384 |", md)  # kept out of the suite's tables

    def test_formatting(self):
        self.assertEqual(report.fmt_time(19.2116e-6), "19.2 us")
        self.assertEqual(report.fmt_time(0.0009997), "1.00 ms")
        self.assertEqual(report.fmt_time(2.5), "2.50 s")
        self.assertEqual(report.fmt_eng(10253916.0), "10.3M")
        self.assertEqual(report.fmt_eng(999.7), "1.00k")
        self.assertEqual(report.sig3(41.23) + "x", "41.2x")
        self.assertEqual(report.sig3(0.012345), "0.0123")

    def test_speedup_and_scaling(self):
        s = report.speedup(self.rows, ("sima", "float", 1, 4096))
        self.assertAlmostEqual(s, 4096 / 200)
        _, out, md, _ = self.run_main()
        self.assertEqual(out.strip(), md.strip())
        self.assertIn("| sima | 1 | 4096 | 819 us | 10.0 | 20.0% | 5.00M | 20.5x |  |", md)
        self.assertIn("| sima | 2 | 4096 | 512 us | 10.0 | 20.0% | 8.00M | 20.5x | 1.60x |", md)
        self.assertIn("2-thread scaling", md)
        self.assertIn("best (minimum real_time) of 3 repetitions", md)

    def test_ordering_and_sections(self):
        _, _, md, _ = self.run_main()
        float_part = md.split("## Results: float")[1].split("## Results: half")[0]
        firsts = [ln.split("|")[1].strip() for ln in float_part.splitlines() if ln.startswith("| ") and "method" not in ln]
        self.assertEqual(firsts[:6], ["softmax"] * 6)
        self.assertEqual(firsts[6:12], ["softmax+alloc"] * 6)
        self.assertLess(md.index("## Speed-up vs softmax (float, 1 thread)"), md.index("## Results: float"))
        self.assertIn("| method | N=197 | N=1024 | N=4096 |", md)
        self.assertIn("| sima | 0.985x | 5.12x | 20.5x |", md)
        self.assertIn("| softmax | float | 1 | O(N^2) | 1.00 ns | 1.23% |", md)
        speedups = md.split("## Speed-up vs softmax")[1].split("\n## ")[0]
        self.assertNotIn("| softmax | 0", speedups)  # baseline not in the summary rows

    def test_time_vs_float_column(self):
        self.assertAlmostEqual(report.vs_float(self.rows, ("sima", "half", 1, 4096)), 0.8)
        _, _, md, _ = self.run_main()
        float_part = md.split("## Results: float")[1].split("## Results: half")[0]
        half_part = md.split("## Results: half")[1]
        self.assertNotIn("time vs float", float_part)
        self.assertIn("| speed-up vs softmax | time vs float |", half_part)
        self.assertIn("| sima | 1 | 4096 | 655 us | 10.0 | 20.0% | 6.25M | 20.5x | 0.800x |", half_part)
        self.assertIn("Time vs float = row time ÷ float time", half_part)
        self.assertNotIn("## Results: bfloat16", md)

    def test_precision_summary(self):
        """Small file: bfloat16 and half rows, some without a float counterpart."""
        secs = {("softmax", "float", 1, 256): 2e-3, ("softmax", "half", 1, 256): 1e-3,
                ("softmax", "bfloat16", 1, 256): 3e-3, ("softmax", "float", 1, 1024): 8e-3,
                ("softmax", "half", 1, 1024): 6e-3, ("sima", "float", 1, 256): 4e-4,
                ("sima", "bfloat16", 1, 1024): 5e-4, ("sima", "half", 2, 256): 2e-4,
                ("aft-local-s32", "half", 1, 256): 1e-4}
        doc = {"context": {}, "benchmarks": [row(f"{m}/{d}/threads:{t}/N:{n}", s)
                                             for (m, d, t, n), s in secs.items()]}
        path = os.path.join(self.tmp.name, "precision.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        rows = report.load([path])[0]
        self.assertAlmostEqual(report.vs_float(rows, ("softmax", "bfloat16", 1, 256)), 1.5)
        self.assertIsNone(report.vs_float(rows, ("sima", "half", 2, 256)))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(report.main([path]), 0)
        md = out.getvalue()
        head = "## Half and bfloat16 time relative to float (1 thread)"
        self.assertLess(md.index("## Speed-up vs softmax (float, 1 thread)"), md.index(head))
        self.assertLess(md.index(head), md.index("## Results: float"))
        summary = md.split(head)[1].split("## Results: float")[0]
        self.assertIn("| method | half N=256 | half N=1024 | bfloat16 N=256 | bfloat16 N=1024 |", summary)
        self.assertIn("| softmax | 0.500x | 0.750x | 1.50x | — |", summary)
        self.assertIn("| sima | — | — | — | — |", summary)  # half only at 2 threads, no float N=1024
        self.assertIn("| aft-local-s32 | — | — | — | — |", summary)  # no float rows at all
        bf16 = md.split("## Results: bfloat16")[1]
        self.assertIn("| softmax | 1 | 256 | 3.00 ms | 10.0 | 20.0% | 1.00M | 1.00x | 1.50x |", bf16)
        self.assertIn("| sima | 1 | 1024 | 500 us | 10.0 | 20.0% | 1.00M | — |  |", bf16)  # no float row
        half = md.split("## Results: half")[1].split("## Results: bfloat16")[0]
        self.assertIn("| sima | 2 | 256 | 200 us | 10.0 | 20.0% | 1.00M | — |  |", half)
        # float-only input: no precision section
        self.assertIsNone(report.precision_table({k: v for k, v in rows.items() if k[1] == "float"}))

    def test_peer_rows(self):
        """oneDNN peer rows: their own summary table, ordered beside softmax, never the baseline."""
        secs = {("softmax", "float", 1, 197): 1e-3, ("softmax", "float", 1, 1024): 8e-3,
                ("softmax", "bfloat16", 1, 197): 2e-3, ("softmax", "bfloat16", 1, 1024): 4e-3,
                ("softmax+alloc", "float", 1, 197): 1.1e-3, ("sima", "float", 1, 197): 5e-4,
                ("sima", "float", 1, 1024): 1e-3, ("onednn-softmax", "float", 1, 197): 2e-3,
                ("onednn-softmax", "float", 1, 1024): 4e-3, ("onednn-softmax", "bfloat16", 1, 197): 1e-3,
                ("onednn-softmax", "bfloat16", 1, 1024): 8e-3, ("onednn-softmax", "float", 2, 1024): 1e-4}
        doc = {"context": {}, "benchmarks": [row(f"{m}/{d}/threads:{t}/N:{n}/real_time", s)
                                             for (m, d, t, n), s in secs.items()]}
        path = os.path.join(self.tmp.name, "peers.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        md, svg = os.path.join(self.tmp.name, "peers.md"), os.path.join(self.tmp.name, "peers.svg")
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(report.main([path, "--markdown", md, "--plot", svg]), 0)
        with open(md, encoding="utf-8") as f, open(svg, encoding="utf-8") as g:
            md, svg = f.read(), g.read()
        head = "## softfree vs oneDNN (1 thread)"
        self.assertLess(md.index("## Speed-up vs softmax (float, 1 thread)"), md.index(head))
        self.assertLess(md.index(head), md.index("## Half and bfloat16 time relative to float"))
        table = md.split(head)[1].split("\n## ")[0]
        self.assertIn("| method | float N=197 | float N=1024 | bfloat16 N=197 | bfloat16 N=1024 |", table)
        self.assertIn("| softmax | 2.00x | 0.500x | 0.500x | 2.00x |", table)  # oneDNN time / softfree time
        self.assertIn("| softmax+alloc | 1.82x | — | — | — |", table)
        self.assertIn("| sima | 4.00x | 4.00x | — | — |", table)  # threads:2 peer row not used
        self.assertNotIn("| onednn-softmax |", table)
        self.assertIn("above 1.00x softfree's method is faster", table)
        speedups = md.split("## Speed-up vs softmax")[1].split("\n## ")[0]
        self.assertIn("| sima | 2.00x | 8.00x |", speedups)  # softmax stays the baseline
        self.assertNotIn("| onednn-softmax |", speedups)
        self.assertIn("_Not listed: onednn-softmax (peer rows, another library's; see softfree vs oneDNN below)._",
                      speedups)
        results = md.split("## Results: float")[1].split("## Results: bfloat16")[0]
        firsts = [ln.split("|")[1].strip() for ln in results.splitlines() if ln.startswith("| ") and "method" not in ln]
        self.assertEqual(firsts, ["softmax"] * 2 + ["softmax+alloc"] + ["onednn-softmax"] * 3 + ["sima"] * 2)
        self.assertIn("| onednn-softmax | 1 | 1024 | 4.00 ms | 10.0 | 20.0% | 1.00M | 2.00x |", results)
        self.assertIn("| onednn-softmax | 2 | 1024 | 100 us | 10.0 | 20.0% | 1.00M | — | 40.0x |", results)
        self.assertIn('stroke-dasharray="6 3"', svg)  # the peer's line, dashed
        self.assertEqual(svg.count("stroke-dasharray"), 2)  # its polyline and its legend entry
        # no peer rows: no peer section
        _, _, plain, _ = self.run_main()
        self.assertNotIn("softfree vs oneDNN", plain)
        self.assertNotIn("Not listed", plain)

    def test_backends_section(self):
        ctx = {"kernel_isa": "avx512_fma_f16c_bf16", "products_bfloat16": "avx512_bf16 (forced)",
               "bf16_dot_peak_gflops_per_core": "575.0"}
        md = report.markdown({}, {}, dict(ctx, date="d", host_name="h"))
        self.assertIn("## Backends", md)
        self.assertIn("- kernels compiled for: avx512_fma_f16c_bf16", md)
        self.assertIn("- bfloat16 storage products: avx512_bf16 (forced)", md)
        self.assertIn("- vdpbf16ps peak, GFLOP/s per core: 575.0", md)
        self.assertNotIn("## Backends", report.markdown({}, {}, {"date": "d"}))

    def test_threads_best_and_dtype(self):
        _, _, md, svg = self.run_main("--threads-best")
        self.assertIn("(float, fastest thread count)", md)
        _, _, md, svg = self.run_main("--dtype", "half")
        self.assertIn("## Speed-up vs softmax (half, 1 thread)", md)
        self.assertIn("half, 1 thread, best of 3", svg)

    def test_svg(self):
        _, _, _, svg = self.run_main()
        root = ET.fromstring(svg)  # well-formed XML
        ns = "{http://www.w3.org/2000/svg}"
        lines = root.findall(ns + "polyline")
        self.assertEqual(len(lines), len(MODELS))
        self.assertTrue(all(len(p.get("points").split()) == len(NS) for p in lines))
        self.assertEqual(len({p.get("stroke") for p in lines}), len(MODELS))  # distinct colours
        texts = [t.text for t in root.iter(ns + "text")]
        for label in list(MODELS) + ["100", "1000", "10000", "sequence length N", "time per call (ms)"]:
            self.assertIn(label, texts)

    def test_styles(self):
        """Every method name the suite has: a fixed style, all colours and all (colour, marker) distinct."""
        for m in SUITE_METHODS:
            self.assertIn(m, report.STYLES, m)
        colours = [c for c, _ in report.STYLES.values()]
        self.assertEqual(len(set(colours)), len(colours))
        self.assertNotIn(report.REFERENCE_COLOUR, colours)
        self.assertNotEqual(report.style("softmax"), report.style("soft-nystrom-m64"))  # both were black
        others = ["new-a", "new-b"]
        self.assertNotEqual(report.style("new-a", others), report.style("new-b", others))
        for _, shape in list(report.STYLES.values()) + [(None, s) for s in report.SHAPES]:
            ET.fromstring(f'<g>{report.marker(shape, 10, 10, "#123456")}</g>')  # every shape draws
        _, _, _, svg = self.run_main()
        root = ET.fromstring(svg)
        strokes = [p.get("stroke") for p in root.iter("{http://www.w3.org/2000/svg}polyline")]
        self.assertEqual(strokes, [report.STYLES[m][0] for m in sorted(MODELS, key=report.method_key)])

    def test_memory(self):
        """The peak_bytes counter: memory column (n/c where a row has none), note, and the memory plot."""
        self.assertEqual(report.fmt_bytes(0), "0 B")
        self.assertEqual(report.fmt_bytes(1000), "1000 B")
        self.assertEqual(report.fmt_bytes(1536), "1.50 KiB")
        self.assertEqual(report.fmt_bytes(3 * 2 ** 20), "3.00 MiB")
        self.assertEqual(report.fmt_bytes(1.5 * 2 ** 30), "1.50 GiB")
        self.assertEqual(report.fmt_bytes(None), "n/c")
        mib = 2.0 ** 20
        mem = {("softmax", "float", 1, 256): 0.5 * mib, ("softmax", "float", 1, 4096): 2 * mib,
               ("softmax+alloc", "float", 1, 256): 0.5 * mib, ("sima", "float", 1, 256): 0.25 * mib,
               ("sima", "float", 1, 4096): 4 * mib, ("sima", "float", 2, 4096): 5 * mib,
               ("sima", "half", 1, 4096): 3 * mib, ("soft-nystrom-m64", "float", 1, 4096): 0.0,
               ("onednn-softmax", "float", 1, 4096): None}
        rows = []
        for (m, d, t, n), b in mem.items():
            extra = {} if b is None else {"peak_bytes": b}
            rows.append(row(f"{m}/{d}/threads:{t}/N:{n}", 1e-3, **extra))
        doc = {"context": {"shape": "B=1 H=6 D=64"}, "benchmarks": rows}
        path = os.path.join(self.tmp.name, "memory.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        md, svg, msvg = (os.path.join(self.tmp.name, "memory" + e) for e in (".md", ".svg", "-memory.svg"))
        with contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(report.main([path, "--markdown", md, "--plot", svg, "--memory-plot", msvg]), 0)
        with open(md, encoding="utf-8") as f, open(msvg, encoding="utf-8") as g:
            md, msvg = f.read(), g.read()
        results = md.split("## Results: float")[1].split("## Results: half")[0]
        self.assertIn("| tokens/s | speed-up vs softmax | memory | 2-thread scaling |", results)
        self.assertIn("| softmax | 1 | 256 | 1.00 ms | 10.0 | 20.0% | 1.00M | 1.00x | 512 KiB |  |", results)
        self.assertIn("| sima | 2 | 4096 | 1.00 ms | 10.0 | 20.0% | 1.00M | — | 5.00 MiB | 1.00x |", results)
        self.assertIn("| soft-nystrom-m64 | 1 | 4096 | 1.00 ms | 10.0 | 20.0% | 1.00M | 1.00x | 0 B |  |", results)
        self.assertIn("| onednn-softmax | 1 | 4096 | 1.00 ms | 10.0 | 20.0% | 1.00M | 1.00x | n/c |  |", results)
        self.assertIn("n/c = not counted", results)
        half = md.split("## Results: half")[1]
        self.assertIn("| speed-up vs softmax | memory | time vs float |", half)
        self.assertIn("| sima | 1 | 4096 | 1.00 ms | 10.0 | 20.0% | 1.00M | — | 3.00 MiB | 1.00x |", half)
        # the memory plot: float, 1 thread; no +alloc, no uncounted or zero points; the N^2 reference
        self.assertEqual(report.memory_series(report.load([path])[0], "float"),
                         {"softmax": {256: 0.5 * mib, 4096: 2 * mib}, "sima": {256: 0.25 * mib, 4096: 4 * mib},
                          "soft-nystrom-m64": {4096: 0.0}})
        label, ref = report.score_matrix([1024], {"shape": "B=2 H=3 D=64"})
        self.assertEqual((label, ref), ("N² float scores (B=2, H=3)", {1024: 4.0 * 6 * 1024 ** 2}))
        self.assertEqual(report.suite_shape({}), (1, 6))
        root = ET.fromstring(msvg)
        ns = "{http://www.w3.org/2000/svg}"
        lines = root.findall(ns + "polyline")
        colours = [report.STYLES[m][0] for m in ("softmax", "sima", "soft-nystrom-m64")]
        self.assertEqual([p.get("stroke") for p in lines], colours + [report.REFERENCE_COLOUR])
        self.assertEqual([len(p.get("points").split()) for p in lines], [2, 2, 0, 2])
        self.assertEqual(lines[-1].get("stroke-dasharray"), "2 3")
        texts = [t.text for t in root.iter(ns + "text")]
        for label in ("softmax", "sima", "N² float scores (B=1, H=6)", "peak bytes allocated (MiB)", "0.1", "1000"):
            self.assertIn(label, texts)
        # the reference is 24 MiB at N = 256 ... 384 MiB at N = 4096: the y axis reaches 1000 MiB
        ys = [float(p.split(",")[1]) for p in lines[-1].get("points").split()]
        self.assertGreater(ys[0], ys[1])  # rising: SVG's y grows downwards

    def test_no_matching_rows(self):
        bad = os.path.join(self.tmp.name, "empty.json")
        with open(bad, "w") as f:
            json.dump({"context": {}, "benchmarks": [row("BM_other/8", 1e-6)]}, f)
        with self.assertRaises(SystemExit) as cm:
            report.main([bad])
        self.assertIn("no benchmark rows named", str(cm.exception.code))  # sys.exit(str) -> exit status 1


if __name__ == "__main__":
    unittest.main()
