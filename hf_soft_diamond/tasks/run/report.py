"""Read a recorded study: per-arm tables with confidence intervals, claim verdicts, the frontier figure.

A study recorded by ``compare --record_dir`` (``docs/studies/<study>/``) holds per stage
(``tune``, ``final``, ``sparse``) and arm one folder per seed with the run's
``all_results.json``. This module reads those files only (no weights, no training) and writes
into the study folder (or ``--output_dir``):

* ``report.md``: per stage, every arm's task metrics and sparsity as mean [95% CI] over seeds
  (:func:`hf_soft_diamond.tasks.stats.mean_interval`), then each claim of the claims file with
  the difference ``arm - baseline`` per comparison (paired by seed), its interval, and the
  verdict (:func:`hf_soft_diamond.tasks.stats.verdict`);
* ``frontier_<stage>.png``: the metric-sparsity frontier of the stage's arms
  (:func:`hf_soft_diamond.tasks.plots.plot_frontier`).

Claims file (JSON)::

    {"claims": [
      {"claim": "SaS priors beat L1 on quality", "metric": "bleu",
       "comparisons": [["final/sas_a0.5", "final/l1"], ["final/sas_a1.5", "final/l1"]]},
      {"claim": "pWD keeps AdamW-level BLEU at high sparsity", "metric": "bleu", "margin": 1.0,
       "comparisons": [["sparse/pwd_p0.8", "final/none"]]}
    ]}

Each comparison names two arms as ``stage/arm``. ``metric`` is one of the task's metrics
(``bleu``, ``chrf``, ``loss``; ``accuracy``), ``sparsity@<tau>`` (percent of the regularized
weights at ``|w| <= tau``, e.g. ``sparsity@1e-03``), ``live_sparsity@<tau>`` (the same over the
regularized weights that are not padding-only, :mod:`hf_soft_diamond.padding_taps`; runs that
record ``sparsity["live"]``), ``pruned@<fraction>`` (the metric after
magnitude pruning that fraction, from the prune curve, e.g. ``pruned@0.7``),
``live_pruned@<fraction>`` (the same with the fraction of the live weights, the padding-only
taps zeroed: ``prune_curve_live``) or
``sparsity_at_1pt_loss`` (percent prunable for at most one point of the metric). ``margin``
(default 0) turns "better" into "at most ``margin`` worse"; ``note`` (optional) is shown beside
the verdict. A claim's verdict is its
comparisons' verdict when they agree, else it lists them (e.g. ``mixed: 2 supported, 1 not
separable``).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import stats
from .compare import SPLIT_PREFIX, TASK_METRIC, TASK_METRICS, metric_key

#: Study stages in the order a study runs them (other folder names are read after these).
STAGE_ORDER = ("tune", "final", "sparse")
STAGE_TITLES = {"tune": "tuning (validation split, seed 1)", "final": "best grid point per arm (test split)",
                "sparse": "sparsest grid point within 1 point of none (test split)"}

#: The tuning stage's file naming the arms a later stage runs (``compare --split validation`` writes both):
#: an arm missing there had no grid point that qualified (e.g. none within the tolerance of ``none``).
STAGE_PICKS = {"final": "tune/best_arms.json", "sparse": "tune/sparsest_arms.json"}
#: The verdict of a comparison whose arm the tuning stage did not pick for that stage.
NOT_PICKED = "no grid point qualified"

#: ``{stage: {arm: {seed: all_results}}}``
Study = dict[str, dict[str, dict[int, dict[str, Any]]]]


def load_study(study_dir: str | Path) -> Study:
    """Every recorded run under ``study_dir`` (``<stage>/<arm>/seed<k>/all_results.json``)."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise FileNotFoundError(f"`study_dir` {study_dir} is not a folder")
    study: Study = {}
    for results_path in sorted(study_dir.glob("*/*/seed*/all_results.json")):
        seed_dir = results_path.parent
        try:
            seed = int(seed_dir.name.removeprefix("seed"))
        except ValueError:
            continue
        stage, arm = seed_dir.parent.parent.name, seed_dir.parent.name
        study.setdefault(stage, {}).setdefault(arm, {})[seed] = json.loads(results_path.read_text())
    if not study:
        raise FileNotFoundError(f"no recorded runs under {study_dir} (expected <stage>/<arm>/seed<k>/all_results.json)")
    ordered = [s for s in STAGE_ORDER if s in study] + sorted(s for s in study if s not in STAGE_ORDER)
    return {stage: study[stage] for stage in ordered}


#: The ``task`` a run's results record -> the report's task name (image runs record the pipeline name).
RECORDED_TASKS: dict[str, str] = {"translation": "translation", "image-classification": "image", "image": "image"}


def task_of(study: Study) -> str:
    """The task (``translation`` / ``image``) the study's runs recorded (:data:`RECORDED_TASKS`)."""
    tasks = {RECORDED_TASKS.get(r.get("task"), r.get("task"))
             for arms in study.values() for seeds in arms.values() for r in seeds.values()}
    if len(tasks) != 1 or not tasks <= set(TASK_METRICS):
        raise ValueError(f"a study holds runs of one task among {sorted(TASK_METRICS)}; "
                         f"found {sorted(map(str, tasks))}")
    return tasks.pop()


def _split_of(results: Mapping[str, Any]) -> str:
    split = results.get("dataset_split") or "test"
    return split if split in SPLIT_PREFIX else "test"


#: Results keys of the weights a figure is measured over: all regularized ones, or the live ones
#: (not padding-only, :mod:`hf_soft_diamond.padding_taps`).
_SPARSITY_GROUP = {False: "regularized", True: "live"}
_PRUNE_CURVE = {False: "prune_curve", True: "prune_curve_live"}


@dataclass(frozen=True)
class MetricSpec:
    """How to read one metric from a run's results, its label and direction.

    ``kind``: ``"task"`` (a metric of the task, e.g. ``bleu``), ``"sparsity"`` (percent at
    ``|w| <= tau``; ``threshold`` is the tau as the results spell it), ``"pruned"`` (the
    metric after pruning ``fraction``) or ``"at_loss"`` (``sparsity_at_1pt_loss``); ``live``:
    over the live weights (``sparsity["live"]``, ``prune_curve_live``) instead of all
    regularized ones.
    """

    name: str
    label: str
    higher_is_better: bool
    kind: str = "task"
    live: bool = False
    threshold: str = ""
    fraction: float = math.nan

    def value(self, task: str, results: Mapping[str, Any]) -> float:
        """The metric of one run (NaN when the run does not report it)."""
        if self.kind == "sparsity":
            group = (results.get("sparsity") or {}).get(_SPARSITY_GROUP[self.live], {})
            return 100.0 * float(group.get(self.threshold, math.nan))
        if self.kind == "pruned":
            hits = [p["metric"] for p in results.get(_PRUNE_CURVE[self.live]) or []
                    if math.isclose(float(p["fraction"]), self.fraction)]
            return float(hits[0]) if hits else math.nan
        if self.kind == "at_loss":
            return 100.0 * float(results.get("sparsity_at_1pt_loss", math.nan))
        return float(results.get(metric_key(task, _split_of(results), self.name), math.nan))


def metric_spec(task: str, name: str) -> MetricSpec:
    """The :class:`MetricSpec` of ``name`` for ``task`` (see the module docstring for the names)."""
    if task not in TASK_METRICS:
        raise ValueError(f"`task` must be one of {sorted(TASK_METRICS)}, got {task!r}.")
    if name in TASK_METRICS[task]:
        label, higher = TASK_METRICS[task][name]
        return MetricSpec(name, label, higher)
    headline = TASK_METRIC[task][1].split(" ")[0]
    prefix, _, argument = name.partition("@")
    live = prefix.startswith("live_")
    if prefix in ("sparsity", "live_sparsity"):
        try:
            float(argument)
        except ValueError:
            raise ValueError(f"metric {name!r}: the threshold after '{prefix}@' must be a number like 1e-03") from None
        label = f"≤ {argument}{', live' if live else ''} (%)"
        return MetricSpec(name, label, True, "sparsity", live, threshold=argument)
    if prefix in ("pruned", "live_pruned"):
        try:
            fraction = float(argument)
        except ValueError:
            fraction = math.nan
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"metric {name!r}: the fraction after '{prefix}@' must be in [0, 1), e.g. {prefix}@0.7")
        return MetricSpec(name, f"{headline} at {100 * fraction:g}% {'of live ' if live else ''}pruned", True,
                          "pruned", live, fraction=fraction)
    if name == "sparsity_at_1pt_loss":
        return MetricSpec(name, f"prunable at ≤ 1 pt {headline} loss (%)", True, "at_loss")
    allowed = sorted(TASK_METRICS[task]) + ["sparsity@<tau>", "live_sparsity@<tau>", "pruned@<fraction>",
                                            "live_pruned@<fraction>", "sparsity_at_1pt_loss"]
    raise ValueError(f"`metric` must be one of {allowed} for task {task!r}, got {name!r}.")


def per_seed(study: Study, task: str, ref: str, spec: MetricSpec) -> dict[int, float]:
    """``{seed: value}`` of ``spec`` for the arm ``ref`` = ``stage/arm`` (seeds without the value left out)."""
    stage, _, arm = ref.partition("/")
    if not arm:
        raise ValueError(f"an arm is named as 'stage/arm', got {ref!r}")
    runs = study.get(stage, {}).get(arm, {})
    values = {seed: spec.value(task, r) for seed, r in runs.items()}
    return {seed: v for seed, v in values.items() if not math.isnan(v)}


@dataclass(frozen=True)
class ComparisonResult:
    """One comparison of a claim: both arms' intervals, the difference ``arm - baseline`` paired by
    seed (``None`` where a side has no runs) and its verdict."""

    arm: str
    baseline: str
    arm_interval: stats.Interval | None
    baseline_interval: stats.Interval | None
    difference: stats.Difference | None
    verdict: str


@dataclass(frozen=True)
class ClaimResult:
    """One claim of a claims file: its metric and margin, its comparisons and their combined verdict."""

    claim: str
    metric: MetricSpec
    margin: float
    comparisons: list[ComparisonResult]
    verdict: str
    note: str = ""


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """One verdict for a claim: the comparisons' verdict when they agree, else a count of each."""
    if not verdicts:
        return stats.NOT_MEASURED
    if len(set(verdicts)) == 1:
        return verdicts[0]
    order = [stats.SUPPORTED, stats.NOT_SEPARABLE, stats.NOT_SUPPORTED, NOT_PICKED, stats.NOT_MEASURED]
    return "mixed: " + ", ".join(f"{verdicts.count(v)} {v}" for v in order if v in verdicts)


def check_claims(claims: Mapping[str, Any], task: str) -> list[dict[str, Any]]:
    """The claims file's ``claims`` list, validated (raises ``ValueError`` naming the bad entry)."""
    items = claims.get("claims") if isinstance(claims, Mapping) else None
    if not isinstance(items, list) or not items:
        raise ValueError("the claims file must hold {\"claims\": [...]} with at least one claim")
    for i, item in enumerate(items):
        where = f"claims[{i}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("claim"), str):
            raise ValueError(f"{where}: each claim needs a 'claim' text")
        metric_spec(task, item.get("metric", TASK_METRIC[task][0]))
        margin = item.get("margin", 0.0)
        if not isinstance(margin, (int, float)) or not margin >= 0:
            raise ValueError(f"{where}: 'margin' must be a number >= 0, got {margin!r}")
        comps = item.get("comparisons")
        if not isinstance(comps, list) or not comps or any(
                not isinstance(c, list) or len(c) != 2 or not all(isinstance(x, str) and "/" in x for x in c)
                for c in comps):
            raise ValueError(f"{where}: 'comparisons' must be a non-empty list of [\"stage/arm\", \"stage/baseline\"]")
    return items


def unpicked_arms(study_dir: str | Path, study: Study) -> set[str]:
    """``stage/arm`` names the tuning stage left out of a later stage (:data:`STAGE_PICKS`): arms
    tuned in ``study`` that the stage's picks file lacks (e.g. no grid point within the tolerance)."""
    tuned = {arm.split("[", 1)[0] for arm in study.get("tune", {})}
    missing: set[str] = set()
    for stage, picks_file in STAGE_PICKS.items():
        path = Path(study_dir) / picks_file
        if path.is_file():
            missing |= {f"{stage}/{arm}" for arm in tuned - set(json.loads(path.read_text()))}
    return missing


def evaluate_claims(study: Study, claims: Mapping[str, Any], confidence: float = 0.95,
                    unpicked: set[str] | frozenset[str] = frozenset()) -> list[ClaimResult]:
    """Each claim's comparisons (difference of the two arms, paired by seed) and verdicts.

    ``unpicked``: ``stage/arm`` names the tuning stage did not pick for that stage
    (:func:`unpicked_arms`); their comparisons read :data:`NOT_PICKED` instead of "not measured yet".
    """
    task = task_of(study)
    out = []
    for item in check_claims(claims, task):
        spec = metric_spec(task, item.get("metric", TASK_METRIC[task][0]))
        margin = float(item.get("margin", 0.0))
        results = []
        for arm, baseline in item["comparisons"]:
            a, b = per_seed(study, task, arm, spec), per_seed(study, task, baseline, spec)
            a_int = stats.mean_interval(list(a.values()), confidence) if a else None
            b_int = stats.mean_interval(list(b.values()), confidence) if b else None
            diff = stats.difference_interval(a, b, confidence) if a and b else None
            if diff is not None:
                verdict = stats.verdict(diff, higher_is_better=spec.higher_is_better, margin=margin)
            else:
                verdict = NOT_PICKED if {arm, baseline} & set(unpicked) else stats.NOT_MEASURED
            results.append(ComparisonResult(arm, baseline, a_int, b_int, diff, verdict))
        out.append(ClaimResult(item["claim"], spec, margin, results,
                               combine_verdicts([r.verdict for r in results]), str(item.get("note", ""))))
    return out


def _fmt_number(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals; one that rounds to zero prints as 0, never -0 (a bound of
    an interval of identical values lands a rounding error below 0)."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _fmt_interval(interval: stats.Interval | None, digits: int = 2) -> str:
    if interval is None:
        return "-"
    if math.isnan(interval.low):  # one seed: no interval (the table's seeds column says so)
        return _fmt_number(interval.mean, digits)
    return (f"{_fmt_number(interval.mean, digits)} [{_fmt_number(interval.low, digits)}, "
            f"{_fmt_number(interval.high, digits)}]")


def stage_table(study: Study, stage: str, task: str, confidence: float = 0.95) -> str:
    """One stage's arms as a Markdown table: each metric as mean [CI] over the seeds.

    The prune columns are those of the live weights when every run records them
    (:func:`measures_live_weights`; the all-weights curve stays in the results and in claims),
    else those of every curve the runs record."""
    columns = [metric_spec(task, m) for m in TASK_METRICS[task]]
    columns += [metric_spec(task, "sparsity@1e-08"), metric_spec(task, "sparsity@1e-03")]
    if any("live" in (r.get("sparsity") or {}) for seeds in study[stage].values() for r in seeds.values()):
        columns += [metric_spec(task, "live_sparsity@1e-08"), metric_spec(task, "live_sparsity@1e-03")]
    curves = (("live_pruned", "prune_curve_live"),) if measures_live_weights(study, stage) else (
        ("pruned", "prune_curve"), ("live_pruned", "prune_curve_live"))
    for prefix, key in curves:
        fractions = sorted({float(p["fraction"]) for seeds in study[stage].values() for r in seeds.values()
                            for p in r.get(key) or [] if float(p["fraction"]) > 0})
        columns += [metric_spec(task, f"{prefix}@{f:g}") for f in fractions]
    pct = round(100 * confidence)
    head = ["arm", "seeds"] + [c.label for c in columns]
    lines = [f"Values: mean [{pct}% CI] over seeds (one seed: the value)."
             + (" Pruned fractions are of the live weights." if curves[0][0] == "live_pruned" else ""), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    arms = sorted(study[stage], key=lambda a: (a != "none", a))  # the unregularized reference first
    for arm in arms:
        seeds = study[stage][arm]
        row = [arm, ", ".join(map(str, sorted(seeds)))]
        for spec in columns:
            values = [v for v in (spec.value(task, r) for r in seeds.values()) if not math.isnan(v)]
            digits = 3 if spec.name == "loss" else (1 if spec.kind == "sparsity" else 2)
            row.append(_fmt_interval(stats.mean_interval(values, confidence), digits) if values else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def claims_table(results: Sequence[ClaimResult], confidence: float = 0.95) -> str:
    """Each claim's verdict (one table), then every comparison behind it (a second table)."""
    pct = round(100 * confidence)
    head = ["claim", "metric", "arm", "baseline", f"arm [{pct}% CI]", f"baseline [{pct}% CI]",
            f"difference [{pct}% CI]", "pairs", "verdict"]
    if any(c.note for c in results):
        lines = ["| claim | verdict | note |", "|---|---|---|"]
        lines += [f"| {c.claim} | **{c.verdict}** | {c.note} |" for c in results]
    else:
        lines = ["| claim | verdict |", "|---|---|"] + [f"| {c.claim} | **{c.verdict}** |" for c in results]
    lines += ["", "Each comparison: the difference arm - baseline over the seeds both ran (paired by seed).", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for claim in results:
        digits = 3 if claim.metric.name == "loss" else 2
        metric = claim.metric.label + (f" (margin {claim.margin:g})" if claim.margin else "")
        for i, c in enumerate(claim.comparisons):
            pairs = "-" if c.difference is None else f"{c.difference.n}{'' if c.difference.paired else ' (unpaired)'}"
            lines.append("| " + " | ".join([claim.claim if i == 0 else "", metric if i == 0 else "", c.arm, c.baseline,
                                            _fmt_interval(c.arm_interval, digits),
                                            _fmt_interval(c.baseline_interval, digits),
                                            _fmt_interval(c.difference, digits), pairs, c.verdict]) + " |")
    return "\n".join(lines) + "\n"


def measures_live_weights(study: Study, stage: str) -> bool:
    """Whether every run of ``stage`` records its sparsity and prune curve over the live weights
    (``sparsity["live"]`` and ``prune_curve_live``), so that the stage can be read on them."""
    runs = [r for seeds in study[stage].values() for r in seeds.values()]
    return bool(runs) and all("live" in (r.get("sparsity") or {}) and r.get("prune_curve_live") for r in runs)


def frontier_series(study: Study, stage: str, task: str, live: bool = False) -> dict[str, dict[str, Any]]:
    """Per arm of ``stage``: the point (sparsity ≤ 1e-3 in %, metric interval on the whole split) and
    the prune curve as (percent of weights ≤ 1e-3 after pruning, metric) averaged over seeds.
    ``live``: both over the live weights (``sparsity["live"]``, ``prune_curve_live``).

    After pruning a fraction f by magnitude, the weights at ``|w| <= 1e-3`` are ``max(f, s)`` of
    the whole (s: the run's own fraction below 1e-3), so the prune curve continues the frontier
    from the run's own sparsity; points with f <= s only prune weights that were already tiny.
    """
    spec = metric_spec(task, TASK_METRIC[task][0])
    small = metric_spec(task, f"{'live_' if live else ''}sparsity@1e-03")
    curve_key = _PRUNE_CURVE[live]
    out: dict[str, dict[str, Any]] = {}
    for arm, seeds in study[stage].items():
        runs = list(seeds.values())
        sparsity = [small.value(task, r) / 100 for r in runs]
        metric = [spec.value(task, r) for r in runs]
        if any(math.isnan(v) for v in sparsity + metric):
            continue
        curve = []
        fractions = sorted({float(p["fraction"]) for r in runs for p in r.get(curve_key) or []})
        for f in fractions:
            pts = [(100 * max(f, s), float(p["metric"])) for r, s in zip(runs, sparsity)
                   for p in r.get(curve_key) or [] if math.isclose(float(p["fraction"]), f)]
            if len(pts) == len(runs):
                curve.append((sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)))
        out[arm] = {"sparsity": 100 * sum(sparsity) / len(sparsity), "metric": stats.mean_interval(metric),
                    "curve": curve}
    return out


def write_report(study_dir: str | Path, claims: Mapping[str, Any] | None = None, output_dir: str | Path | None = None,
                 confidence: float = 0.95) -> tuple[Path, list[ClaimResult]]:
    """Write ``report.md`` and ``frontier_<stage>.png`` for the study in ``study_dir``; return the
    report's path and the claims' results (empty without ``claims``)."""
    from ..plots import plot_frontier

    study = load_study(study_dir)
    task = task_of(study)
    output_dir = Path(output_dir) if output_dir is not None else Path(study_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    label = TASK_METRIC[task][1]
    parts = [f"# Study report: {Path(study_dir).name}", "",
             "Written by `hf-soft-diamond report` from the recorded runs (`<stage>/<arm>/seed<k>/all_results.json`). "
             f"Intervals: {round(100 * confidence)}% Student t over seeds; differences paired by seed. "
             "Prune-curve columns are measured on the runs' prune-evaluation subset.", ""]
    results: list[ClaimResult] = []
    if claims is not None:
        results = evaluate_claims(study, claims, confidence, unpicked_arms(study_dir, study))
        parts += ["## Claims", "", claims_table(results, confidence)]
    for stage in study:
        parts += [f"## Stage `{stage}`: {STAGE_TITLES.get(stage, stage)}", "",
                  stage_table(study, stage, task, confidence)]
        live = measures_live_weights(study, stage)
        series = frontier_series(study, stage, task, live=live)
        if series:
            figure = plot_frontier(series, output_dir / f"frontier_{stage}.png", metric_name=label,
                                   title=f"{label} against sparsity: {Path(study_dir).name}, stage {stage}",
                                   weights="live regularized weights" if live else "regularized weights")
            parts += [f"![frontier of stage {stage}]({figure.name})", ""]
            if live:
                parts += ["Its sparsity and prune curves are over the live weights (`sparsity[\"live\"]`, "
                          "`prune_curve_live`: the convolution taps that only ever multiply zero padding "
                          "left out).", ""]
    path = output_dir / "report.md"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(path)
    return path, results


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="hf-soft-diamond report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study_dir", help="a recorded study folder, e.g. docs/studies/translation_finetune")
    ap.add_argument("--claims", default=None, help="claims JSON file (see above); without it: tables and figures only")
    ap.add_argument("--output_dir", default=None, help="where report.md and the figures go (default: study_dir)")
    ap.add_argument("--confidence", type=float, default=0.95, help="interval level in (0, 1) (default 0.95)")
    args = ap.parse_args(argv)
    if not 0.0 < args.confidence < 1.0:
        ap.error(f"--confidence must be in (0, 1), got {args.confidence}")
    claims = None
    if args.claims is not None:
        claims = json.loads(Path(args.claims).read_text())
        try:
            check_claims(claims, task_of(load_study(args.study_dir)))
        except ValueError as err:
            ap.error(f"--claims {args.claims}: {err}")
    path, results = write_report(args.study_dir, claims, args.output_dir, args.confidence)
    for result in results:  # the verdicts on the terminal too; the comparisons behind them are in the report
        print(f"{result.verdict:>24}  {result.claim}")
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    main()
