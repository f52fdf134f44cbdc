"""The measurement scripts' page writers (tools/zoo_docs.py, tools/homotopy_docs.py) on small
made-up results: every table they promise is there, and a verdict follows the numbers."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import homotopy_docs
import zoo_docs


def test_zoo_page_states_parity_and_failures(tmp_path):
    ops = lambda conv, bn, total: {"Conv": conv, "BatchNormalization": bn, "Relu": total - conv - bn}  # noqa: E731 - a one-line helper, local to this function
    results = {"meta": {"machine": "test", "versions": {"torch": "x"}, "date": "2026-11-30"}, "models": {
        "repvgg_a0": {"status": "verified", "params": 9e6, "max_error": 1e-6, "optimize_seconds": 3,
                      "ops": {"direct": ops(44, 17, 125), "deploy": ops(22, 0, 47), "foldpass": ops(22, 0, 47)}},
        "levit_128s": {"status": "verified", "params": 7e6, "optimize_seconds": 9, "kept": {"affine_folding: x": 2},
                       "ops": {"direct": ops(4, 48, 380), "deploy": ops(4, 0, 299), "foldpass": ops(4, 5, 310)},
                       "speed": {f"{k}@{b}": {"us": 1.0, "vs_direct": 1.1} for k in ("direct", "deploy", "foldpass")
                                 for b in (1, 8)}},
        "tv:swin_t": {"status": "failed", "error": "FoldpassError: no"}}}
    zoo_docs.write_docs(results, str(tmp_path))
    page = (tmp_path / "zoo.md").read_text()
    assert "| repvgg_a0 | 9.0M | 44 / 0 / 17 / **125** | 22 / 0 / 0 / **47** | 22 / 0 / 0 / **47** | yes |" in page
    assert "no: 11 ops > deploy, BatchNormalization +5" in page and "b1: foldpass 1.10x" in page
    assert "- swin_t: failed: FoldpassError: no" in page and "2 tried, 2 verified, 1 with no more" in page


def test_homotopy_page_gives_the_claim_its_verdict(tmp_path):
    run = lambda acc, t, opt=None: {"t": t, "val_acc": acc, "train_loss": [0.1] * len(acc), "seconds": 60,  # noqa: E731 - a one-line helper, local to this function
                                    **({"optimized_val_acc": opt, "recalibrated_val_acc": opt} if opt else {})}
    static, paper = [0.5] * 3, [0.9, 0.5, 0.0]
    results = {"meta": {"model": "ResNet34 (width 8)", "lr": 0.001, "steps_per_t": 5, "seeds": 2, "machine": "test",
                        "torch": "x", "date": "2026-11-30"},
               "figure3": {"static t = 0.5/0": run([0.9, 0.95, 0.97], static),
                           "static t = 0.5/1": run([0.9, 0.95, 0.97], static),
                           "paper schedule (t0 = 0.9)/0": run([0.9, 0.5, 0.1], paper, 0.1),
                           "paper schedule (t0 = 0.9)/1": run([0.9, 0.9, 0.96], paper, 0.96)},
               "figure2": {"0.5/0": {"val_acc": [0.8, 0.9]}},
               "wall": {"figure3": 120.0}}
    homotopy_docs.write_docs(results, str(tmp_path))
    page = (tmp_path / "homotopy.md").read_text()
    assert "| paper schedule (t0 = 0.9) | 53.00 +- 60.81 | 97.00 +- 0.00 (static t = 0.5) | -44.00 +- 60.81 | **no** |" \
        in page
    assert "## Ablation" in page and "## Figure 2" in page and "figure3 2.0 min" in page
    assert (tmp_path / "homotopy_figure3.png").exists() and (tmp_path / "homotopy_figure2.png").exists()


def test_zoo_page_calls_slower_only_beyond_the_measured_noise_band(tmp_path):
    def timed(foldpass_ratio, again_ratio):
        return {"status": "verified", "params": 1e6, "ops": {"direct": {"Relu": 3}, "foldpass": {"Relu": 2}},
                "speed": {f"{k}@{b}": {"us": 1.0, "vs_direct": r} for b in (1, 8)
                          for k, r in (("direct", 1.0), ("direct again", again_ratio), ("foldpass", foldpass_ratio))}}

    results = {"meta": {}, "models": {"tv:a": timed(0.96, 1.05), "tv:b": timed(0.90, 0.99), "tv:c": timed(1.2, 1.0)}}
    zoo_docs.write_docs(results, str(tmp_path))
    page = (tmp_path / "zoo.md").read_text()
    assert "3 timed, 1 slower than the direct export beyond the model's own A/A band or the spread" in page
    assert ": b (b1 0.90x (noise +-0.01), b8 0.90x (noise +-0.01)); 0 timed against" in page  # a: within its own A/A
    assert "b1: foldpass 0.96x (A/A +-0.05)" in page


def test_homotopy_page_lists_each_deskip_recipe(tmp_path):
    entry = lambda orig, opt: {"original_val_acc": orig, "optimized_val_acc": opt, "epochs": 5,  # noqa: E731 - a one-line helper, local to this function
                               "conversion_max_error": 0.0, "seconds": 60}
    results = {"meta": {"model": "ResNet34 (width 8)", "lr": 0.001, "steps_per_t": 5, "seeds": 2, "machine": "test",
                        "torch": "x", "date": "2026-11-30"},
               "deskip": {"resnet18/foldpass/0": entry(0.98, 0.90), "resnet18/deskip/0": entry(0.98, 0.975),
                          "resnet18/deskip/1": entry(0.97, 0.97)}}
    homotopy_docs.write_docs(results, str(tmp_path))
    page = (tmp_path / "homotopy.md").read_text()
    assert "| deskip (batch norm frozen throughout, never re-estimated; the default) | 97.50 +- 0.71 | " \
           "97.25 +- 0.35 | -0.25 +- 0.35 | " \
           "-0.5, +0.0 |" in page
    assert "| no-teacher (batch norm frozen at t = 0) | 98.00 +- 0.00 | 90.00 +- 0.00 | -8.00 +- 0.00 | -8.0 |" in page


def test_homotopy_page_compares_the_three_split_runs_with_the_former_ones():
    meta = {"model": "ResNet34 (width 8)", "lr": 0.001, "steps_per_t": 5, "seeds": 2, "machine": "test", "torch": "x",
            "date": "2026-12-02"}
    before = {"meta": meta,
              "ablation": {f"static t = 0.5, cosine lr/{s}": {"val_acc": [0.97]} for s in "01"} | {
                  f"{homotopy_docs.DISTILLED}/{s}": {"val_acc": [0.97], "optimized_val_acc": v}
                  for s, v in (("0", 0.975), ("1", 0.965))},
              "deskip": {"resnet18/deskip/0": {"original_val_acc": 0.98, "optimized_val_acc": 0.975}}}
    after = {"meta": meta,
             "ablation": {f"static t = 0.5, cosine lr/{s}": {"test_acc": 0.96} for s in "01"} | {
                 f"{homotopy_docs.DISTILLED}/{s}": {"optimized_test_acc": v} for s, v in (("0", 0.95), ("1", 0.93))},
             "deskip": {"resnet18/deskip/0": {"original_test_acc": 0.98, "optimized_test_acc": 0.97}}}
    lines: list[str] = []
    homotopy_docs._splits(lines, before, after)
    page = "\n".join(lines)
    assert "## Re-measured with three splits" in page
    assert "| foldpass recipe, deployed at t = 0 (after `foldpass optimize`) | 97.00 +- 0.71 | 94.00 +- 1.41 | -3.00 |" \
        in page
    assert "| the claim: foldpass recipe - static t = 0.5, cosine lr | +0.00 +- 0.71 | -2.00 +- 1.41 | **no** |" in page
    assert "| de-skip resnet18 (5 epochs): change | -0.50 +- 0.00 | -1.00 +- 0.00 | yes |" in page


def test_compress_page_gives_each_network_its_verdict():
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import compress_benchmark

    def entry(speedup: float, test: float) -> dict:
        files = ["original", "original (A/A)", "foldpass compress", "onnxruntime quantize_static", "NNCF quantize"]
        ratio = {"foldpass compress": speedup, "onnxruntime quantize_static": 1.5, "NNCF quantize": 1.5}
        speed = {th: [{"model": m, "batch": b, "speedup_vs_first": ratio.get(m, 1.0), "median_us_per_image": 100.0}
                      for m in files for b in (1, 64)] for th in ("1", "2")}
        acc = {m: {"selection": 0.98, "test": test if m == "foldpass compress" else 0.975, "params": 10}
               for m in files if m != "original (A/A)"}
        return {"what": "w", "data": {"train": 1, "selection": 1, "test": 1}, "train_seconds": None, "speed": speed,
                "accuracy": acc, "environment": {}, "versions": {"torch": "x"}, "date": "2026-12-02",
                "pruning_alone": {"ratio": None, "tried": [{"ratio": 0.75, "selection_acc": 0.5}]},
                "compress": {"kept": ["exact", "prune"]}, "compress_table": "| t |", "seconds": {"compress": 60}}

    page = compress_benchmark.page({"nets": {"resnet18": entry(5.0, 0.972), "resnet34": entry(2.0, 0.975),
                                             "mobilenet_v2": entry(1.2, 0.95)}})
    assert "| resnet18 | exact, prune | 97.50% -> 97.20% (-0.30) | 5.00x / 5.00x |" in page and "| met (4x) |" in page
    assert "| missed (4x) |" in page  # resnet34: 2x
    assert "never slower, within budget: no |" in page  # mobilenet_v2: 2.5 points below
    assert "3.33x / 3.33x (+0.0 pt)" in page  # foldpass 5x against a 1.5x int8 peer


def test_onnx_zoo_page_counts_the_goal_and_names_each_miss(tmp_path):
    import onnx_zoo

    def run(fp, sim, fp_s, speed_fp):
        return {"ops": {"input": 50, "onnxsim": sim, "foldpass": fp}, "foldpass_s": fp_s, "onnxsim_s": 2.0,
                "export_s": 1.0, "foldpass_error": 1e-7, "foldpass_passed_through": ["LayerNormalization"],
                "speed": {"input": 1.0, "onnxsim": 1.1, "foldpass": speed_fp, "input again": 1.02}}

    results = {"meta": {}, "runs": {"a:ts": run(30, 31, 3.0, 1.12), "b:dy": run(32, 31, 10.0, 1.0),
                                    "c:ts": {"status": "crashed", "error": "boom"},
                                    "d:dy": {"status": "export failed", "error": "torch's exporter fails: x"}}}
    onnx_zoo.write_docs(results, str(tmp_path))
    page = (tmp_path / "onnx_zoo.md").read_text()
    assert "3 runs with an input file; **2 through foldpass**" in page and "1 of them with no more ops than" in page
    assert "- d:dy: torch's exporter fails: x" in page
    assert "1 of 2 timed no slower than onnxsim's file beyond the A/A band (+-0.02); 1 within twice" in page
    assert "- c:ts: boom" in page and "- b:dy: 32 ops, onnxsim 31" in page and "- b:dy: 0.91x onnxsim's speed" in page
    assert "| a | ts | 50 | 31 | 30 | - | 1.0e-07 | LayerNormalization |" in page


def test_zoo_seeds_page_counts_bases_and_refusals(tmp_path):
    import zoo_seeds

    ok = {"status": "verified", "basis": "tolerance", "error": 1e-6, "seconds": 3.0}
    noisy = {"status": "verified", "basis": "float32 noise", "error": 0.07, "seconds": 5.0,
             "wrong_fold": "refused: verification failed"}
    results = {"meta": {"machine": "test", "versions": {"torch": "x"}, "date": "2026-12-03"}, "models": {
        "ghostnetv3_050": {"0": ok, "1": noisy},
        "tv:resnet18": {"0": ok, "1": {"status": "refused", "message": "verification failed: 9", "seconds": 2.0}},
        "tv:swin_v2_b": {"0": ok}}}
    zoo_seeds.write_docs(results, str(tmp_path))
    page = (tmp_path / "zoo_seeds.md").read_text()
    assert "**4 of 5** (model, seed) runs verified, over 3 models and seeds 0, 1; 1 of them on the float32" in page
    assert "refused at 1 of 1 seeds" in page
    assert "covers 2 of the zoo's 77 models at every seed (in the zoo's order); tv:swin_v2_b at some seeds" in page
    assert "Not verified: tv:resnet18 seed 1." in page
    assert "| ghostnetv3_050 | 1e-06 | 0.07 (float32 noise) | 5 s |" in page


def test_compile_time_page_gives_each_model_its_verdict_and_the_totals():
    import compile_time

    def row(seconds, export, compare=5.0):
        phases = {"load": 1.0, "trace": 2.0, "passes": seconds - 13.0 - compare, "export": 5.0, "direct export": compare,
                  "verify": 4.0, "other": 1.0}
        return {"status": "verified", "export_seconds": export, "onnxsim_seconds": 3.0, "onnxsim_ops": 90,
                "direct_ops": 100, "foldpass": {"seconds": seconds, "phases": phases, "ops": 80,
                                                "passes": {"affine_folding": 20.0, "constant_propagation": 1.0}}}

    results = {"meta": {"machine": "test", "date": "2026-12-03"}, "models": {
        "fast": row(30.0, 10.0), "slow": row(90.0, 20.0), "big export": row(70.0, 40.0),
        "broken": {"status": "crashed", "error": "boom"}}}
    page = compile_time.markdown(results)
    assert "**2 of 3** models within the goal" in page  # 90 s against a 20 s export misses; 70 s < 2 x 40 s meets
    assert "foldpass 190 s (175 s without the direct-export comparison), `torch.onnx.export` alone 70 s: 2.71 x" in page
    assert "| slow | 90.0 s | 20.0 s | 3.0 s | 1.0 | 2.0 | 72.0 | 5.0 | 5.0 | 4.0 | 1.0 | affine_folding 20.0 s | " \
           "100 / 90 / 80 | **no** |" in page
    assert page.index("| slow |") < page.index("| big export |") < page.index("| fast |")  # slowest first
    assert "broken (crashed: boom)" in page
    assert "Before and after" not in page
    results["before"] = {"slow": row(120.0, 20.0) | {"commit": "old"}, "fast": row(31.0, 10.0)}
    results["models"]["slow"]["commit"] = "new"
    page = compile_time.markdown(results)  # "fast" ran the same code twice (no commit to tell): no before
    assert "| slow | old: 120.0 s | 2.0 | 102.0 | affine_folding 20.0 s | new: 90.0 s | 2.0 | 72.0 | " \
           "affine_folding 20.0 s | 0.75 |" in page and "| fast | " not in page.split("Before and after")[1]


def test_zoo_page_holds_foldpass_to_the_torchscript_exporters_file_and_lists_the_op_pairs(tmp_path):
    def timed(foldpass_ratio, legacy_ratio, legacy_ops, again=1.02):
        return {"status": "verified", "params": 1e6,
                "ops": {"direct": {"Relu": 3, "ReduceMean": 1}, "foldpass": {"Relu": 2, "GlobalAveragePool": 1},
                        "legacy": legacy_ops},
                "speed": {f"{k}@{b}": {"us": 1.0, "vs_direct": r} for b in (1, 8)
                          for k, r in (("direct", 1.0), ("direct again", again), ("foldpass", foldpass_ratio),
                                       ("legacy", legacy_ratio))}}

    results = {"meta": {}, "models": {
        "tv:a": timed(1.10, 1.12, {"Relu": 2, "GlobalAveragePool": 1}),  # 0.98x of legacy: inside the band
        "tv:b": timed(1.00, 1.10, {"Relu": 2, "ReduceMean": 1}),  # 0.91x: slower
        "tv:c": timed(1.00, 1.01, {"Relu": 2, "GlobalAveragePool": 1}, again=1.0)}}  # own A/A 0: a and c's spread
    zoo_docs.write_docs(results, str(tmp_path))
    page = (tmp_path / "zoo.md").read_text()
    assert "3 timed against the TorchScript exporter's file, 1 slower than it beyond the model's own A/A band or " \
        "the spread between the two files where they hold the very same ops (+-0.02 at batch 1, +-0.02 at batch 8; " \
        "over the 2 models where both hold the same ops: 0.98 to 0.99x, median 0.99x at batch 1" in page
    assert "whichever is larger: b (b1 0.91x of legacy (noise +-0.02)" in page  # a: 0.98x, inside the spread
    assert "| GlobalAveragePool | 0 | 1 | - | b |" in page and "| ReduceMean | 1 | 0 | b | - |" in page
    assert "c (b1" not in page
    assert "| Relu |" not in page  # the same count in both files
