"""What ``hf-soft-diamond export`` ships, measured on one finished run (issue 21).

For RUN_DIR, pruned at ``--prune`` (default: the knee of its prune curve):

* **size on disk** of the weights: dense float32 and float16 ``save_pretrained`` files of
  the pruned model, and the export's sparse bitmask file in float32 and float16;
* **metric**: of the unpruned model, of the pruned in-memory model and of the exported
  model loaded back (must equal the in-memory one: float32 export is lossless), on the
  validation split as ``export`` reads it (``--no_verify``: skipped);
* **load time**: ``from_pretrained`` of the dense folder vs ``load_sparse_pretrained`` of
  the sparse one (median of ``--repeats``);
* **CPU inference**: the unpruned model vs the exported one (both run dense kernels: the
  zeros are stored, not skipped), images: forward of a batch; translation: ``generate``
  on a batch of validation sentences and a teacher-forced forward;
* **sparse kernels**: every ``nn.Linear`` (and ``Conv2d`` as ``unfold`` + matmul) of the
  pruned model with the input it sees in that forward (captured by hooks), dense
  ``F.linear``/``F.conv2d`` vs ``torch.sparse.mm`` with the weight in CSR, at the
  weight's own density, plus a sweep of densities on the largest matrix, so the table
  says where CSR pays on this CPU and where it does not.

Usage (``--threads 1`` by default, to be comparable on a shared machine)::

    python3 benchmarks/bench_export.py RUN_DIR [--prune knee|0.9] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils import benchmark as tbench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_soft_diamond import export as sparse_format  # noqa: E402
from hf_soft_diamond.pruning import prune_by_magnitude  # noqa: E402
from hf_soft_diamond.tasks import export as ex  # noqa: E402

CLOCK = {"name": "wall", "fn": time.perf_counter}


def _set_clock(threads: int, clock: str) -> None:
    """``cpu``: the process CPU time (with 1 torch thread all work runs on one core, so on a shared,
    busy machine it is the latency an idle core would give, without the time spent preempted);
    ``wall``: perf_counter."""
    if clock == "auto":
        clock = "cpu" if threads == 1 else "wall"
    CLOCK.update(name=clock, fn=time.process_time if clock == "cpu" else time.perf_counter)


def _median_time(fn, repeats: int) -> float:
    clock = CLOCK["fn"]
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def _timeit(stmt_fn, min_run_time: float) -> float:
    """Median seconds per call (torch.utils.benchmark, adaptive repeats) on the chosen clock."""
    return tbench.Timer(stmt="f()", globals={"f": stmt_fn}, num_threads=torch.get_num_threads(),
                        timer=CLOCK["fn"]).blocked_autorange(min_run_time=min_run_time).median


def _weights_bytes(folder: Path) -> int:
    return sum((folder / n).stat().st_size for n in ex._weight_files(folder))


def _capture_layer_inputs(model: torch.nn.Module, run_forward) -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    """The first input each Linear/Conv2d sees in ``run_forward()``."""
    seen: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            def hook(m, args, name=name):
                if name not in seen:
                    seen[name] = (m, args[0].detach().clone())
            hooks.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            run_forward()
    finally:
        for h in hooks:
            h.remove()
    return seen


def _layer_paths(mod: torch.nn.Module, x: torch.Tensor):
    """(dense fn, CSR fn, weight density, matmul shape) of one layer on its input; CSR path exact up to float sums."""
    w = mod.weight.detach()
    bias = None if mod.bias is None else mod.bias.detach()
    density = float((w != 0).float().mean())
    if isinstance(mod, torch.nn.Linear):
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        w_csr = w.to_sparse_csr()
        xt = x2.t().contiguous()

        def dense():
            return F.linear(x2, w, bias)

        def sparse():
            y = torch.sparse.mm(w_csr, xt).t()
            return y + bias if bias is not None else y

        return dense, sparse, density, (w.shape[0], w.shape[1], x2.shape[0])
    if mod.groups != 1 or mod.dilation != (1, 1) or not isinstance(mod.padding, tuple):
        return None
    k = mod.kernel_size
    w2 = w.reshape(w.shape[0], -1)
    w_csr = w2.to_sparse_csr()
    n, _, h, wd = x.shape
    oh = (h + 2 * mod.padding[0] - k[0]) // mod.stride[0] + 1
    ow = (wd + 2 * mod.padding[1] - k[1]) // mod.stride[1] + 1

    def dense():
        return mod._conv_forward(x, w, bias)

    def sparse():
        cols = F.unfold(x, k, padding=mod.padding, stride=mod.stride)  # (n, C*k*k, L)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (C*k*k, n*L)
        y = torch.sparse.mm(w_csr, cols).reshape(w.shape[0], n, oh * ow).transpose(0, 1).reshape(n, -1, oh, ow)
        return y + bias.view(1, -1, 1, 1) if bias is not None else y

    return dense, sparse, density, (w2.shape[0], w2.shape[1], n * oh * ow)


def sparse_kernel_table(layers: dict[str, tuple[torch.nn.Module, torch.Tensor]], min_run_time: float,
                        decode_rows: int | None) -> dict[str, Any]:
    rows = []
    totals = {"dense_s": 0.0, "csr_s": 0.0}
    for name, (mod, x) in layers.items():
        variants = [("forward", x)]
        if decode_rows and isinstance(mod, torch.nn.Linear) and x.reshape(-1, x.shape[-1]).shape[0] > decode_rows:
            variants.append((f"{decode_rows} rows", x.reshape(-1, x.shape[-1])[:decode_rows]))
        for label, xin in variants:
            paths = _layer_paths(mod, xin)
            if paths is None:
                continue
            dense, sparse, density, shape = paths
            with torch.no_grad():
                err = float((dense() - sparse()).abs().max())
                td, ts = _timeit(dense, min_run_time), _timeit(sparse, min_run_time)
            rows.append({"layer": name, "input": label, "out_in_rows": shape, "density": density,
                         "dense_ms": 1e3 * td, "csr_ms": 1e3 * ts, "csr_speedup": td / ts, "max_abs_diff": err})
            if label == "forward":
                totals["dense_s"] += td
                totals["csr_s"] += ts
    return {"layers": rows, "totals": totals}


def density_sweep(table: dict[str, Any], min_run_time: float,
                  densities=(1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)) -> dict[str, Any]:
    """Dense ``mm`` vs CSR ``sparse.mm`` at several densities, on the matmul shape of the largest layer."""
    rows = [r for r in table["layers"] if r["input"] == "forward"]
    if not rows:
        return {}
    big = max(rows, key=lambda r: r["out_in_rows"][0] * r["out_in_rows"][1])
    n_out, n_in, n_rows = big["out_in_rows"]
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n_out, n_in, generator=g)
    x = torch.randn(n_in, n_rows, generator=g)
    out = []
    for d in densities:
        wd = w * (torch.rand(w.shape, generator=g) < d)
        w_csr = wd.to_sparse_csr()
        with torch.no_grad():
            td = _timeit(lambda: torch.mm(wd, x), min_run_time)
            ts = _timeit(lambda: torch.sparse.mm(w_csr, x), min_run_time)
        out.append({"density": d, "dense_ms": 1e3 * td, "csr_ms": 1e3 * ts, "csr_speedup": td / ts})
    return {"layer": big["layer"], "shape": [n_out, n_in, n_rows], "rows": out}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--prune", default="knee", help="'knee' or a fraction (as export)")
    ap.add_argument("--tolerance", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5, help="load-time and end-to-end repeats (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--min_run_time", type=float, default=0.2, help="seconds per kernel timing")
    ap.add_argument("--clock", default="auto", choices=("auto", "cpu", "wall"),
                    help="auto: thread CPU time with --threads 1 (robust on a busy machine), else wall time")
    ap.add_argument("--batch", type=int, default=16, help="sentences / images of the inference timings")
    ap.add_argument("--no_verify", dest="verify", action="store_false", help="skip the metrics (no data needed)")
    ap.add_argument("--run_config", default=None, help="the run's training config JSON (as export)")
    ap.add_argument("--max_eval_samples", type=int, default=None, help="cap the verification split")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    _set_clock(args.threads, args.clock)
    run = Path(args.run_dir)
    report: dict[str, Any] = {"run_dir": str(run.resolve()), "threads": args.threads, "clock": CLOCK["name"],
                              "torch": torch.__version__,
                              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    overrides = {} if args.max_eval_samples is None else {"max_eval_samples": args.max_eval_samples}
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        tmp = Path(tmp)
        plan = ex.plan_export(run, tmp / "sparse", prune=args.prune, tolerance=args.tolerance, verify=args.verify,
                              run_config=args.run_config)
        t0 = time.perf_counter()
        manifest = ex.export_run(plan, data_overrides=overrides, log=lambda m: print("  export:", m, flush=True))
        report["export_seconds"] = time.perf_counter() - t0
        report["prune"] = {k: v for k, v in manifest["prune"].items() if k != "regularized_names"}
        report["zeros"] = manifest["zeros"]
        # the same pruning in memory, by the library call export uses
        unpruned = ex.load_run_model(run, image_shape=plan.results.get("image_shape"))
        names = ex.regularized_names(unpruned, plan.results.get("regularizer"))
        pruned, _ = prune_by_magnitude(unpruned, plan.fraction, regularized_names=names)
        exported = sparse_format.load_sparse_pretrained(tmp / "sparse")
        got = exported.state_dict()
        same = all(torch.equal(t, got[k]) for k, t in pruned.state_dict().items())
        report["exported_weights_equal_in_memory_pruned"] = same
        # sizes
        pruned.save_pretrained(tmp / "dense32")
        copy.deepcopy(pruned).half().save_pretrained(tmp / "dense16")
        ex.write_checkpoint(pruned, tmp / "sparse16", fmt="sparse", dtype="float16")
        report["size_bytes"] = {"dense_float32": _weights_bytes(tmp / "dense32"),
                                "dense_float16": _weights_bytes(tmp / "dense16"),
                                "sparse_float32": _weights_bytes(tmp / "sparse"),
                                "sparse_float16": _weights_bytes(tmp / "sparse16")}
        # metric
        tokenizer = None
        if plan.task == "translation":
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(run)
        evaluator = None
        if args.verify:
            ver = manifest["verification"]
            evaluator = ex.build_evaluator(plan.task, ver["data"], plan.split, tokenizer=tokenizer)
            in_memory = evaluator.evaluate(pruned)
            report["metric"] = {"split": plan.split, "n_examples": ver["n_examples"], "name": evaluator.metric,
                                "unpruned": ver["before"], "pruned_in_memory": in_memory,
                                "exported_loaded": ver["after"], "identical": in_memory == ver["after"]}
        # load time
        cls = sparse_format._model_class(pruned.config)
        report["load_seconds"] = {
            "dense_from_pretrained": _median_time(lambda: cls.from_pretrained(tmp / "dense32"), args.repeats),
            "sparse_load_sparse_pretrained": _median_time(lambda: sparse_format.load_sparse_pretrained(tmp / "sparse"),
                                                          args.repeats),
        }
        # inference: unpruned vs exported, end to end; inputs for the kernel table
        if plan.task == "translation":
            if evaluator is not None:
                sources = evaluator.info["sources"][: args.batch]
            else:
                sources = ["Das ist ein kleiner Test ."] * args.batch
            enc = tokenizer(sources, return_tensors="pt", padding=True, truncation=True, max_length=128)
            with torch.no_grad():
                target = unpruned.generate(**enc)

            def gen(m):
                with torch.no_grad():
                    m.generate(**enc)

            def fwd(m):
                with torch.no_grad():
                    m(**enc, decoder_input_ids=target)

            report["inference_seconds"] = {
                f"generate_batch{len(sources)}": {"unpruned": _median_time(lambda: gen(unpruned), args.repeats),
                                                  "exported": _median_time(lambda: gen(exported), args.repeats)},
                f"forward_batch{len(sources)}": {"unpruned": _median_time(lambda: fwd(unpruned), args.repeats),
                                                 "exported": _median_time(lambda: fwd(exported), args.repeats)}}
            layers = _capture_layer_inputs(exported, lambda: fwd(exported))
            decode_rows = len(sources) * int(getattr(exported.generation_config, "num_beams", 1) or 1)
        else:
            if evaluator is not None:
                ds = evaluator.info["dataset"]
                x = ds.pixel_batch(list(range(min(args.batch, len(ds)))))
            else:
                c, h, w = plan.results.get("image_shape") or [3, 32, 32]
                x = torch.randn(args.batch, c, h, w)

            def fwd(m):
                with torch.no_grad():
                    m(pixel_values=x)

            report["inference_seconds"] = {f"forward_batch{x.shape[0]}": {
                "unpruned": _median_time(lambda: fwd(unpruned), args.repeats),
                "exported": _median_time(lambda: fwd(exported), args.repeats)}}
            layers = _capture_layer_inputs(exported, lambda: fwd(exported))
            decode_rows = None
        report["sparse_kernels"] = sparse_kernel_table(layers, args.min_run_time, decode_rows)
        report["density_sweep"] = density_sweep(report["sparse_kernels"], args.min_run_time)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def print_report(r: dict[str, Any]) -> None:
    mb = 1024 * 1024
    p = r["prune"]
    print(f"\nrun {r['run_dir']}  (torch {r['torch']}, {r['threads']} thread(s), {r['clock']} clock)")
    print(f"pruned {100 * p['pruned_fraction']:.2f}% of {p['num_regularized']:,} regularized weights "
          f"(requested {p['requested']}, |w| <= {p['threshold']:.3g}); zeros in all parameters "
          f"{100 * r['zeros']['all_zeros'] / r['zeros']['all_numel']:.2f}%")
    s = r["size_bytes"]
    print("size on disk (weights): " + ", ".join(f"{k} {v / mb:.2f} MB ({v / s['dense_float32']:.2f}x)"
                                                 for k, v in s.items()))
    if "metric" in r:
        m = r["metric"]
        print(f"{m['name']} on {m['split']} ({m['n_examples']}): unpruned {m['unpruned']:.2f}, pruned in memory "
              f"{m['pruned_in_memory']:.2f}, exported {m['exported_loaded']:.2f} (identical: {m['identical']})")
    print(f"exported weights equal the in-memory pruned ones: {r['exported_weights_equal_in_memory_pruned']}")
    ls = r["load_seconds"]
    print(f"load: dense from_pretrained {1e3 * ls['dense_from_pretrained']:.0f} ms, sparse "
          f"{1e3 * ls['sparse_load_sparse_pretrained']:.0f} ms")
    for k, v in r["inference_seconds"].items():
        print(f"{k}: unpruned {1e3 * v['unpruned']:.1f} ms, exported {1e3 * v['exported']:.1f} ms")
    t = r["sparse_kernels"]["totals"]
    print(f"all Linear/Conv2d layers on their forward inputs: dense {1e3 * t['dense_s']:.2f} ms, CSR "
          f"{1e3 * t['csr_s']:.2f} ms ({t['dense_s'] / max(t['csr_s'], 1e-12):.2f}x)")
    print(f"{'layer':60s} {'input':>8s} {'out x in x rows':>18s} {'density':>8s} {'dense ms':>9s} {'CSR ms':>9s} "
          f"{'speedup':>8s}")
    for row in r["sparse_kernels"]["layers"]:
        shape = "x".join(map(str, row["out_in_rows"]))
        print(f"{row['layer'][-60:]:60s} {row['input']:>8s} {shape:>18s} {row['density']:8.3f} {row['dense_ms']:9.3f} "
              f"{row['csr_ms']:9.3f} {row['csr_speedup']:8.2f}")
    sw = r.get("density_sweep")
    if sw:
        print(f"density sweep on {sw['layer']} ({'x'.join(map(str, sw['shape']))}): " + ", ".join(
            f"{row['density']:g}: {row['csr_speedup']:.2f}x" for row in sw["rows"]))


if __name__ == "__main__":
    main()
