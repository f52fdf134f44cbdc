"""docs/zoo.md from docs/zoo.json (tools/zoo.py): the op-count table against the direct export and
timm's deploy form, the speed ratios where ops differ, and the summary the issue asks for."""

from __future__ import annotations

import os

KEY_OPS = ("Conv", "Add", "BatchNormalization")


def cell(ops: dict | None) -> str:
    if not ops:
        return "-"
    return " / ".join(str(ops.get(k, 0)) for k in KEY_OPS) + f" / **{sum(ops.values())}**"


def parity(entry: dict) -> str:
    """'yes' when foldpass has no more convs, batch norms or ops than the deploy form (and no more
    ops than the direct export); what is over otherwise."""
    ops = entry.get("ops", {})
    ours = ops.get("foldpass")
    if not ours:
        return "-"
    over = []
    for peer in ("deploy", "direct"):
        ref = ops.get(peer)
        if not ref:
            continue
        if sum(ours.values()) > sum(ref.values()):
            over.append(f"{sum(ours.values()) - sum(ref.values())} ops > {peer}")
        if peer == "deploy":
            over += [f"{k} +{ours.get(k, 0) - ref.get(k, 0)}" for k in ("Conv", "BatchNormalization")
                     if ours.get(k, 0) > ref.get(k, 0)]
    return "yes" if not over else "no: " + ", ".join(over)


def noise(entry: dict, batch: int) -> float | None:
    """How far the direct export's ratio to a second copy of itself is from 1 (the A/A noise band)."""
    s = entry.get("speed") or {}
    again = s.get(f"direct again@{batch}")
    return abs(again["vs_direct"] - 1) if again else None


def slower(entry: dict, floor: dict[int, float]) -> list[str]:
    """The batches at which foldpass runs slower than the direct export beyond this model's own A/A
    band, or the spread between two files of the same ops (typical_noise) where that is larger."""
    s = entry.get("speed") or {}
    out = []
    for batch in (1, 8):
        ours, own = s.get(f"foldpass@{batch}"), noise(entry, batch)
        band = max(own or 0.0, floor.get(batch, 0.0))
        if ours and own is not None and ours["vs_direct"] < 1 - band:
            out.append(f"b{batch} {ours['vs_direct']:.2f}x (noise +-{band:.2f})")
    return out


def _vs_legacy(entry: dict, batch: int) -> float | None:
    s = entry.get("speed") or {}
    ours, theirs = s.get(f"foldpass@{batch}"), s.get(f"legacy@{batch}")
    return ours["vs_direct"] / theirs["vs_direct"] if ours and theirs else None


def _same_ops(models: dict) -> list[dict]:
    """The models whose foldpass file and TorchScript file hold the very same op counts."""
    return [e for e in models.values() if e.get("ops", {}).get("legacy") and e["ops"]["legacy"] == e["ops"].get("foldpass")]


def typical_noise(models: dict) -> dict[int, float]:
    """How far foldpass's file and the TorchScript exporter's run apart where they hold the very same
    ops (the same op types, the same counts: any difference is the machine's, or the node order's),
    per batch: the largest such deviation from 1 over the zoo. One run's own A/A (a file against a
    copy of itself) can come out at 0.00 by chance, and two different files that compute the same
    differ more than one file does from itself. The slow side only: how much slower a file of the same
    ops has looked (the largest 1 - ratio)."""
    return {b: max([1 - r for e in _same_ops(models) if (r := _vs_legacy(e, b)) is not None] + [0.0])
            for b in (1, 8)}


def same_ops_spread(models: dict) -> str:
    """The foldpass / legacy ratios where both files hold the same ops, per batch: range and median."""
    import statistics

    same = _same_ops(models)
    parts = []
    for b in (1, 8):
        ratios = [r for e in same if (r := _vs_legacy(e, b)) is not None]
        if ratios:
            parts.append(f"{min(ratios):.2f} to {max(ratios):.2f}x, median {statistics.median(ratios):.2f}x at batch {b}")
    return f"over the {len(same)} models where both hold the same ops: " + "; ".join(parts) if parts else ""


def slower_than_legacy(entry: dict, floor: dict[int, float] | None = None) -> list[str]:
    """The batches at which foldpass runs slower than the TorchScript exporter's file beyond this
    model's own A/A band, or the spread between two files of the same ops (typical_noise) where that is
    larger (both files timed in the same interleaved run against the direct export; the zoo-wide worst
    A/A band would hide a model's difference inside another model's noise)."""
    out = []
    for batch in (1, 8):
        ratio, own = _vs_legacy(entry, batch), noise(entry, batch)
        band = max(own, (floor or {}).get(batch, 0.0)) if own is not None else None
        if ratio is not None and band is not None and ratio < 1 - band:
            out.append(f"b{batch} {ratio:.2f}x of legacy (noise +-{band:.2f})")
    return out


def op_pairs(models: dict) -> list[str]:
    """Markdown table: each op type whose count differs between the TorchScript exporter's file and
    foldpass's, over the models that have both (how the two write the same computation)."""
    both = {k: e["ops"] for k, e in models.items() if "legacy" in e.get("ops", {}) and "foldpass" in e.get("ops", {})}
    if not both:
        return []
    kinds = sorted({op for o in both.values() for op in (*o["legacy"], *o["foldpass"])})
    rows = []
    for op in kinds:
        diff = {k.removeprefix("tv:"): (o["legacy"].get(op, 0), o["foldpass"].get(op, 0)) for k, o in both.items()
                if o["legacy"].get(op, 0) != o["foldpass"].get(op, 0)}
        if not diff:
            continue
        more = [k for k, (a, b) in diff.items() if a > b]
        fewer = [k for k, (a, b) in diff.items() if a < b]
        names = lambda ks: (", ".join(ks[:5]) + (f" and {len(ks) - 5} more" if len(ks) > 5 else "")) or "-"  # noqa: E731 - local
        rows.append(f"| {op} | {sum(a for a, _ in diff.values())} | {sum(b for _, b in diff.values())} | "
                    f"{names(more)} | {names(fewer)} |")
    return ["## foldpass against the TorchScript exporter, op type by op type", "",
            f"Over the {len(both)} models exported by the TorchScript exporter too (`--legacy`): each op type "
            "whose count differs, its total in the models where it differs, and those models. A pair of rows that "
            "trade counts (GlobalAveragePool / ReduceMean, Flatten / Reshape) is the same computation written two "
            "ways; shape plumbing (Shape, Gather, Unsqueeze, Concat, Constant) is what the TorchScript exporter "
            "writes for a dynamic batch and foldpass folds away.", "",
            "| op | legacy | foldpass | models where legacy has more | models where foldpass has more |",
            "|---|---:|---:|---|---|", *rows, ""]


def speed(entry: dict) -> str:
    s = entry.get("speed")
    if not s:
        return "not timed"
    parts = []
    for batch in (1, 8):
        row = [f"{kind} {s[f'{kind}@{batch}']['vs_direct']:.2f}x" for kind in ("foldpass", "deploy", "legacy")
               if f"{kind}@{batch}" in s]
        band = noise(entry, batch)
        parts.append(f"b{batch}: " + ", ".join(row) + (f" (A/A +-{band:.2f})" if band is not None else ""))
    return "; ".join(parts)


def write_docs(results: dict, folder: str) -> None:
    meta = results.get("meta", {})
    models = results.get("models", {})
    timm = {k: v for k, v in models.items() if not k.startswith("tv:")}
    tv = {k: v for k, v in models.items() if k.startswith("tv:")}
    floor = typical_noise(models)
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    lines = ["# The zoo: foldpass against the direct export and the hand-written deploy form", "",
             f"{meta.get('machine', '?')}; {versions}; {meta.get('date', '?')}. Random weights and random batch-norm "
             "statistics, input 1 x 3 x 224 x 224, dynamic batch. **direct**: `torch.onnx.export(model, dynamo=True)` "
             "of the train form (its own optimizer on); **deploy**: timm's `reparameterize_model()` form exported the "
             "same way; **legacy** (where a row shows it): torch's TorchScript exporter (`dynamo=False`, opset 17); "
             "**foldpass**: `foldpass.optimize(model)` then `save_onnx` (verified against the original). "
             "Op counts are Conv / Add / BatchNormalization / **all ops**. Speed: onnxruntime CPU, interleaved "
             "rounds, median ratio against the direct export (> 1 is faster), measured only where the files differ in "
             "some op type's count; A/A is the direct export timed again as its own peer, how far its ratio is from 1 (the noise "
             "band: these runs shared the 2 cores with other jobs, and the band says how much that moved the ratios). "
             "Rows measured at an older commit say so (`commit`). Re-run: `python tools/zoo.py` (resumable; "
             "`--docs-only` redraws this page).", ""]
    for title, group in (("timm's re-parameterizable families (smallest model of each)", timm),
                         ("torchvision classification models under 100M parameters", tv)):
        if not group:
            continue
        done = [e for e in group.values() if e.get("status") == "verified"]
        at_parity = [k for k, e in group.items() if parity(e) == "yes"]
        lines += [f"## {title}", "",
                  f"{len(group)} tried, {len(done)} verified, {len(at_parity)} with no more convs, batch norms or "
                  "ops than the deploy form (where there is one) and no more ops than the direct export; "
                  f"{sum(1 for e in group.values() if e.get('speed'))} timed, "
                  f"{sum(1 for e in group.values() if slower(e, floor))} slower than the direct export beyond the "
                  "model's own A/A band or the spread between two files of the same ops (below), whichever is larger"
                  + (": " + "; ".join(f"{k.removeprefix('tv:')} ({', '.join(slower(e, floor))})"
                                      for k, e in group.items() if slower(e, floor))
                     if any(slower(e, floor) for e in group.values()) else "") + "; "
                  f"{sum(1 for e in group.values() if 'legacy@1' in (e.get('speed') or {}))} timed against the "
                  "TorchScript exporter's file, "
                  f"{sum(1 for e in group.values() if slower_than_legacy(e, floor))} slower than it beyond the model's own "
                  f"A/A band or the spread between the two files where they hold the very same ops (+-{floor[1]:.2f} "
                  f"at batch 1, +-{floor[8]:.2f} at batch 8; {same_ops_spread(models)}), whichever is larger"
                  + (": " + "; ".join(f"{k.removeprefix('tv:')} ({', '.join(slower_than_legacy(e, floor))})"
                                      for k, e in group.items() if slower_than_legacy(e, floor))
                     if any(slower_than_legacy(e, floor) for e in group.values()) else "") + ".", "",
                  "| model | params | direct | deploy | foldpass | parity | max error / scale | optimize | speed | commit |",
                  "|---|---:|---|---|---|---|---:|---:|---|---|"]
        for name, e in group.items():
            ops = e.get("ops", {})
            err = e.get("max_error")
            lines.append(f"| {name.removeprefix('tv:')} | {e.get('params', 0) / 1e6:.1f}M | {cell(ops.get('direct'))} | "
                         f"{cell(ops.get('deploy'))} | {cell(ops.get('foldpass'))} | {parity(e)} | "
                         f"{'-' if err is None else f'{err:.2g}'} | {e.get('optimize_seconds', 0):.0f} s | {speed(e)} | "
                         f"{e.get('commit', '-')} |")
        failures = {k: e for k, e in group.items() if e.get("status") != "verified"}
        if failures:
            lines += ["", "Not verified:", ""]
            lines += [f"- {k.removeprefix('tv:')}: {e.get('status')}: {e.get('error', '')}" for k, e in failures.items()]
        kept = {}
        for k, e in group.items():
            for reason, n in e.get("kept", {}).items():
                if "max_fold_bytes" not in reason and "larger than its inputs" not in reason:
                    kept.setdefault(reason, []).append(k.removeprefix("tv:"))
        if kept:
            lines += ["", "What `--explain` says was kept (names and numbers blanked), with the models it says it of:", ""]
            for reason, names in sorted(kept.items(), key=lambda kv: -len(kv[1]))[:8]:
                lines.append(f"- {reason[:220]} ({', '.join(names[:6])}{' ...' if len(names) > 6 else ''})")
        lines.append("")
    lines += op_pairs(models)
    with open(os.path.join(folder, "zoo.md"), "w") as f:
        f.write("\n".join(lines))
