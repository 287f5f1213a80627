"""The study report: intervals against scipy's t tests, verdicts on studies built with a known answer,
the frontier's sparsity after pruning, and the shipped claims files against the studies' arms."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from hf_soft_diamond.tasks import stats
from hf_soft_diamond.tasks.run import report

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- intervals and verdicts


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_mean_interval_matches_scipy_one_sample_t(confidence):
    values = [35.1, 34.2, 36.0, 35.7]
    got = stats.mean_interval(values, confidence)
    ref = sps.ttest_1samp(values, 0.0).confidence_interval(confidence)
    assert got.mean == pytest.approx(np.mean(values))
    assert (got.low, got.high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert got.n == 4


def test_paired_difference_matches_scipy_ttest_rel():
    arm = {1: 30.2, 2: 31.0, 3: 29.5}
    base = {1: 28.0, 2: 29.9, 3: 28.1}
    got = stats.difference_interval(arm, base)
    ref = sps.ttest_rel([arm[s] for s in (1, 2, 3)], [base[s] for s in (1, 2, 3)]).confidence_interval(0.95)
    assert got.paired and got.n == 3
    assert (got.low, got.high) == pytest.approx((ref.low, ref.high), rel=1e-12)


def test_pairing_uses_only_the_common_seeds():
    arm = {1: 2.0, 2: 3.0, 3: 5.0, 7: 100.0}
    base = {1: 1.0, 2: 1.5, 3: 2.0}
    got = stats.difference_interval(arm, base)
    ref = sps.ttest_rel([2.0, 3.0, 5.0], [1.0, 1.5, 2.0]).confidence_interval(0.95)
    assert got.n == 3 and (got.low, got.high) == pytest.approx((ref.low, ref.high))


def test_unpaired_difference_matches_scipy_welch():
    arm = {1: 30.2, 2: 31.0, 3: 29.5}
    base = {4: 28.0, 5: 29.9, 6: 28.1, 8: 27.0}
    got = stats.difference_interval(arm, base)
    ref = sps.ttest_ind(list(arm.values()), list(base.values()), equal_var=False).confidence_interval(0.95)
    assert not got.paired
    assert (got.low, got.high) == pytest.approx((ref.low, ref.high), rel=1e-10)


def test_one_seed_has_no_interval_and_no_verdict():
    diff = stats.difference_interval({1: 30.0}, {1: 20.0})
    assert diff.mean == 10.0 and math.isnan(diff.low) and math.isnan(diff.high)
    assert stats.verdict(diff) == stats.NOT_MEASURED


@pytest.mark.parametrize("interval, higher, margin, expected", [
    (stats.Interval(1.0, 0.2, 1.8, 3), True, 0.0, stats.SUPPORTED),
    (stats.Interval(1.0, -0.2, 2.2, 3), True, 0.0, stats.NOT_SEPARABLE),
    (stats.Interval(-1.0, -1.8, -0.2, 3), True, 0.0, stats.NOT_SUPPORTED),
    # a loss: the arm is better when the difference is negative
    (stats.Interval(-1.0, -1.8, -0.2, 3), False, 0.0, stats.SUPPORTED),
    (stats.Interval(1.0, 0.2, 1.8, 3), False, 0.0, stats.NOT_SUPPORTED),
    # "at most 1 point worse": [-0.8, 0.4] lies above -1; [-1.6, -1.2] below; [-1.5, 0.1] straddles
    (stats.Interval(-0.2, -0.8, 0.4, 3), True, 1.0, stats.SUPPORTED),
    (stats.Interval(-1.4, -1.6, -1.2, 3), True, 1.0, stats.NOT_SUPPORTED),
    (stats.Interval(-0.7, -1.5, 0.1, 3), True, 1.0, stats.NOT_SEPARABLE),
])
def test_verdict(interval, higher, margin, expected):
    assert stats.verdict(interval, higher_is_better=higher, margin=margin) == expected


def test_bad_confidence_and_margin_are_named():
    with pytest.raises(ValueError, match="`confidence` must be in \\(0, 1\\)"):
        stats.mean_interval([1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="`margin` must be >= 0"):
        stats.verdict(stats.Interval(0.0, -1.0, 1.0, 3), margin=-1.0)


# ---------------------------------------------------------------- a study with a known answer


def _results(split: str, bleu: float, small: float, curve: dict[float, float], task: str = "translation") -> dict:
    prefix = {"validation": "eval", "test": "test"}[split]
    return {"task": task, "dataset_split": split, f"{prefix}_bleu": bleu, f"{prefix}_chrf": bleu + 20.0,
            f"{prefix}_loss": 3.0 - bleu / 100,
            "sparsity": {"regularized": {"1e-08": small / 2, "1e-03": small, "1e-02": min(1.0, small + 0.1)}},
            "prune_curve": [{"fraction": f, "metric": m} for f, m in curve.items()]}


def _write_study(root: Path, runs: dict[tuple[str, str, int], dict]) -> Path:
    for (stage, arm, seed), results in runs.items():
        folder = root / stage / arm / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "all_results.json").write_text(json.dumps(results))
    return root


@pytest.fixture
def known_study(tmp_path):
    """``better`` is 3 BLEU above ``none`` at every seed (+- 0.2), ``same`` equals ``none`` +- 0.5
    at alternating signs, ``worse`` is 2 below; sparsity 60% vs 2%."""
    rng = np.random.default_rng(0)
    runs = {}
    for seed in (1, 2, 3):
        base = 30.0 + seed  # seed-to-seed variation shared by all arms: what pairing removes
        runs[("final", "none", seed)] = _results("test", base, 0.02, {0.0: base, 0.7: 2.0})
        runs[("final", "better", seed)] = _results("test", base + 3.0 + rng.uniform(-0.2, 0.2), 0.6,
                                                   {0.0: base + 3, 0.7: 25.0 + seed})
        runs[("final", "same", seed)] = _results("test", base + (0.5 if seed % 2 else -0.5), 0.3, {0.0: base, 0.7: 2.0})
        runs[("final", "worse", seed)] = _results("test", base - 2.0 + rng.uniform(-0.1, 0.1), 0.1,
                                                  {0.0: base, 0.7: 2.0})
    runs[("tune", "better[reg_strength=0.1]", 1)] = _results("validation", 33.0, 0.6, {0.0: 33.0, 0.5: 32.0})
    return _write_study(tmp_path / "study", runs)


def test_claims_on_a_study_with_a_known_answer(known_study):
    claims = {"claims": [
        {"claim": "better beats none", "metric": "bleu", "comparisons": [["final/better", "final/none"]]},
        {"claim": "same beats none", "metric": "bleu", "comparisons": [["final/same", "final/none"]]},
        {"claim": "worse beats none", "metric": "bleu", "comparisons": [["final/worse", "final/none"]]},
        {"claim": "worse within 3 of none", "metric": "bleu", "margin": 3.0,
         "comparisons": [["final/worse", "final/none"]]},
        {"claim": "lower loss", "metric": "loss", "comparisons": [["final/better", "final/none"]]},
        {"claim": "sparser", "metric": "sparsity@1e-03", "comparisons": [["final/better", "final/none"]]},
        {"claim": "more BLEU at 70% pruned", "metric": "pruned@0.7", "comparisons": [["final/better", "final/none"]]},
        {"claim": "both", "metric": "bleu",
         "comparisons": [["final/better", "final/none"], ["final/same", "final/none"]]},
        {"claim": "not run", "metric": "bleu", "comparisons": [["sparse/better", "final/none"]]},
    ]}
    results = {r.claim: r for r in report.evaluate_claims(report.load_study(known_study), claims)}
    assert results["better beats none"].verdict == stats.SUPPORTED
    assert results["same beats none"].verdict == stats.NOT_SEPARABLE
    assert results["worse beats none"].verdict == stats.NOT_SUPPORTED
    assert results["worse within 3 of none"].verdict == stats.SUPPORTED
    assert results["lower loss"].verdict == stats.SUPPORTED  # loss = 3 - bleu/100: lower for the better arm
    assert results["sparser"].verdict == stats.SUPPORTED
    assert results["more BLEU at 70% pruned"].verdict == stats.SUPPORTED
    assert results["both"].verdict == "mixed: 1 supported, 1 not separable"
    assert results["not run"].verdict == stats.NOT_MEASURED
    diff = results["sparser"].comparisons[0].difference
    assert diff.mean == pytest.approx(58.0) and diff.paired and diff.n == 3  # percent points


def test_report_writes_tables_and_a_frontier_per_stage(known_study, tmp_path):
    claims = {"claims": [{"claim": "better beats none", "comparisons": [["final/better", "final/none"]]}]}
    path, _ = report.write_report(known_study, claims, output_dir=tmp_path / "out")
    text = path.read_text()
    assert "| better beats none | **supported** |" in text
    assert "## Stage `tune`" in text and "## Stage `final`" in text
    assert text.index("## Stage `tune`") < text.index("## Stage `final`")  # stages in the order a study runs them
    for stage in ("tune", "final"):
        png = tmp_path / "out" / f"frontier_{stage}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the final table: none's BLEU is 31, 32, 33 over the seeds: mean 32, t interval from scipy
    ref = sps.ttest_1samp([31.0, 32.0, 33.0], 0.0).confidence_interval(0.95)
    row = next(line for line in text.splitlines() if line.startswith("| none | 1, 2, 3 |"))
    assert f"32.00 [{ref.low:.2f}, {ref.high:.2f}]" in row


def test_frontier_continues_from_the_runs_own_sparsity(tmp_path):
    # a run with 60% of its weights <= 1e-3: pruning 50% removes only those, so that point sits at 60%;
    # pruning 70% leaves 70% <= 1e-3
    study = _write_study(tmp_path / "s", {("final", "a", 1): _results("test", 30.0, 0.6, {0.0: 30.0, 0.5: 29.9,
                                                                                              0.7: 20.0})})
    series = report.frontier_series(report.load_study(study), "final", "translation")["a"]
    assert series["sparsity"] == pytest.approx(60.0)
    assert series["curve"] == pytest.approx([(60.0, 30.0), (60.0, 29.9), (70.0, 20.0)])


def test_frontier_zoom_fits_the_arms_near_the_best_and_counts_the_rest():
    # best 35 (seeds 34, 35, 36), a second arm at 20 (one seed), a collapsed one at 0: with zoom 0.5 the
    # floor is 35 - 17.5 = 17.5, the collapsed arm is hidden, and the panel spans the best arm's t interval
    # (scipy) down to 20, padded by 5% of that span; x runs to 10% past the sparsest arm shown, plus 3
    from hf_soft_diamond.tasks.plots import frontier_zoom
    best = sps.ttest_1samp([34.0, 35.0, 36.0], 0.0).confidence_interval(0.95)
    series = {"best": {"sparsity": 2.0, "metric": stats.mean_interval([34.0, 35.0, 36.0])},
              "second": {"sparsity": 40.0, "metric": stats.mean_interval([20.0])},
              "collapsed": {"sparsity": 90.0, "metric": stats.mean_interval([0.0, 0.0])}}
    floor, x_limits, y_limits, hidden = frontier_zoom(series, zoom=0.5)
    assert floor == pytest.approx(17.5) and hidden == 1
    pad = 0.05 * (best.high - 20.0)
    assert y_limits == pytest.approx((20.0 - pad, best.high + pad))
    assert x_limits == pytest.approx((-2.0, 47.0))
    assert frontier_zoom(series, zoom=1.0)[3] == 0  # a floor of 0 shows every arm


_AB = [["final/a", "final/b"]]


@pytest.mark.parametrize("claims, message", [
    ({}, "at least one claim"),
    ({"claims": [{"claim": "x", "metric": "meteor", "comparisons": _AB}]}, "`metric` must be one of"),
    ({"claims": [{"claim": "x", "metric": "pruned@1.5", "comparisons": _AB}]}, "must be in \\[0, 1\\)"),
    ({"claims": [{"claim": "x", "comparisons": [["a", "final/b"]]}]}, "stage/arm"),
    ({"claims": [{"claim": "x", "margin": -1, "comparisons": _AB}]}, "'margin' must be a number >= 0"),
])
def test_bad_claims_are_refused_with_the_entry_named(claims, message):
    with pytest.raises(ValueError, match=message):
        report.check_claims(claims, "translation")


def test_cli_refuses_bad_claims_before_writing(known_study, tmp_path, capsys):
    bad = tmp_path / "claims.json"
    bad.write_text(json.dumps({"claims": [{"claim": "x", "metric": "rouge", "comparisons": [["final/a", "final/b"]]}]}))
    with pytest.raises(SystemExit):
        report.main([str(known_study), "--claims", str(bad), "--output_dir", str(tmp_path / "out")])
    assert "--claims" in capsys.readouterr().err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the shipped studies


def test_the_recorded_study_table_repeats_the_run_files():
    """The report's tuning table holds, for each recorded run, the BLEU and sparsity in its all_results.json."""
    study_dir = REPO / "docs" / "studies" / "translation_finetune"
    table = report.stage_table(report.load_study(study_dir), "tune", "translation")
    for results_path in sorted((study_dir / "tune").glob("*/seed1/all_results.json")):
        raw = json.loads(results_path.read_text())
        row = next(line for line in table.splitlines() if line.startswith(f"| {results_path.parent.parent.name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) == pytest.approx(raw["eval_bleu"], abs=0.005)
        assert float(cells[6]) == pytest.approx(100 * raw["sparsity"]["regularized"]["1e-03"], abs=0.05)


@pytest.mark.parametrize("claims_file, arms_file, task, runner", [
    ("claims_translation_finetune.json", "tune_translation_finetune.json", "translation",
     "scripts/study_translation_finetune.sh"),
    ("claims_image_converged.json", "tune_image.json", "image", "scripts/study_image_converged.sh"),
    # questions asked after the study was read: the write-up gives the command
    ("claims_image_converged_followup.json", "tune_image.json", "image", "docs/results.md"),
])
def test_shipped_claims_name_the_studies_arms(claims_file, arms_file, task, runner):
    """Every arm a shipped claim compares is an arm of the study's tuning grid, in a stage the study runs:
    a typo would leave the claim 'not measured yet' forever."""
    claims = json.loads((REPO / "configs" / claims_file).read_text())
    arms = set(json.loads((REPO / "configs" / arms_file).read_text()))
    for item in report.check_claims(claims, task):
        for ref in (x for pair in item["comparisons"] for x in pair):
            stage, arm = ref.split("/")
            assert stage in report.STAGE_ORDER and arm in arms, (claims_file, ref)
    text = (REPO / runner).read_text()
    assert re.search(rf"report .*--claims configs/{re.escape(claims_file)}", text), f"{runner} runs the report"


def test_an_arm_the_tuning_stage_did_not_pick_is_said_so(known_study):
    """No grid point of 'worse' within the tolerance: the sparse stage has no 'worse', and the claim
    says why instead of waiting for runs that will never come."""
    _write_study(known_study, {("tune", "worse[reg_strength=1]", 1): _results("validation", 20.0, 0.9, {0.0: 20.0})})
    (known_study / "tune" / "sparsest_arms.json").write_text(json.dumps({"better": {"reg_strength": 0.1}}))
    study = report.load_study(known_study)
    assert report.unpicked_arms(known_study, study) == {"sparse/worse"}  # no best_arms.json: final not judged
    claims = {"claims": [{"claim": "c", "comparisons": [["sparse/better", "final/none"]]},
                         {"claim": "d", "comparisons": [["sparse/worse", "final/none"]]}]}
    c, d = report.evaluate_claims(study, claims, unpicked=report.unpicked_arms(known_study, study))
    assert c.verdict == stats.NOT_MEASURED  # picked, not run yet
    assert d.verdict == report.NOT_PICKED


def test_live_sparsity_is_judged_on_the_live_weights_only(tmp_path):
    """Both arms zero the same padding-only half of the weights; only 'prior' makes live weights small.
    sparsity@ sees 55% vs 50%; live_sparsity@ sees 10% vs 0%, and the tables show both."""
    runs = {}
    for seed, jitter in zip((1, 2, 3), (0.0, 0.01, -0.01)):
        for arm, live_small in (("none", 0.0), ("prior", 0.10 + jitter)):
            results = _results("test", 30.0, 0.5 + live_small / 2, {0.5: 30.0}, task="image")
            results["test_accuracy"] = 90.0
            results["sparsity"]["live"] = {"1e-08": 0.0, "1e-03": live_small, "1e-02": live_small}
            runs[("final", arm, seed)] = results
    study = report.load_study(_write_study(tmp_path / "study", runs))
    spec = report.metric_spec("image", "live_sparsity@1e-03")
    assert spec.label == "≤ 1e-03, live (%)"
    assert report.per_seed(study, "image", "final/prior", spec) == pytest.approx({1: 10.0, 2: 11.0, 3: 9.0})
    assert report.per_seed(study, "image", "final/prior", report.metric_spec("image", "sparsity@1e-03")) == \
        pytest.approx({1: 55.0, 2: 55.5, 3: 54.5})
    table = report.stage_table(study, "final", "image").splitlines()
    row = next(line for line in table if line.startswith("| prior |"))
    assert "10.0 [7.5, 12.5]" in row and "55.0 [53.8, 56.2]" in row
    with pytest.raises(ValueError, match="live_sparsity@"):
        report.metric_spec("image", "live_sparsity@many")


def _image_run(accuracy: float, live_small: float, curve: dict, live_curve: dict | None) -> dict:
    """An image run whose padding-only half of the weights is zero (regularized sparsity 0.5 + live / 2)."""
    results = _results("test", 0.0, 0.5 + live_small / 2, curve, task="image")
    results["test_accuracy"] = accuracy
    results["sparsity"]["live"] = {"1e-08": 0.0, "1e-03": live_small, "1e-02": live_small}
    if live_curve is not None:
        results["prune_curve_live"] = [{"fraction": f, "metric": m} for f, m in live_curve.items()]
    return results


def test_live_pruned_reads_the_prune_curve_of_the_live_weights(tmp_path):
    """At 90% of all weights pruned both arms look alike (the padding-only half goes first); pruning
    80% of the live weights separates them: live_pruned@ reads prune_curve_live, pruned@ prune_curve."""
    runs = {}
    for seed in (1, 2, 3):
        runs[("final", "none", seed)] = _image_run(90.0, 0.0, {0.0: 90.0, 0.9: 80.0}, {0.0: 90.0, 0.8: 40.0 + seed})
        runs[("final", "prior", seed)] = _image_run(90.0, 0.6, {0.0: 90.0, 0.9: 80.5}, {0.0: 90.0, 0.8: 85.0 + seed})
    study = report.load_study(_write_study(tmp_path / "study", runs))
    spec = report.metric_spec("image", "live_pruned@0.8")
    assert spec.label == "accuracy at 80% of live pruned"
    assert report.per_seed(study, "image", "final/prior", spec) == {1: 86.0, 2: 87.0, 3: 88.0}
    assert report.per_seed(study, "image", "final/prior", report.metric_spec("image", "pruned@0.9")) == \
        {1: 80.5, 2: 80.5, 3: 80.5}
    claims = {"claims": [{"claim": "c", "metric": "live_pruned@0.8", "comparisons": [["final/prior", "final/none"]]}]}
    (result,) = report.evaluate_claims(study, claims)
    assert result.verdict == stats.SUPPORTED and result.comparisons[0].difference.mean == pytest.approx(45.0)
    header = report.stage_table(study, "final", "image").splitlines()[2]
    assert "accuracy at 80% of live pruned" in header  # every run has the live curve: its columns only
    assert "accuracy at 90% pruned" not in header
    with pytest.raises(ValueError, match=r"after 'live_pruned@' must be in \[0, 1\)"):
        report.metric_spec("image", "live_pruned@1.2")


def test_an_interval_of_identical_values_prints_no_negative_zero():
    assert report._fmt_interval(stats.Interval(0.0, -1e-17, 1e-17, 3), 1) == "0.0 [0.0, 0.0]"
    values = [0.0, 0.0003, 0.0]  # a live exact-zero share of 0-0.0003%: the lower bound is below 0
    assert report._fmt_interval(stats.mean_interval(values), 1) == "0.0 [0.0, 0.0]"
    assert report._fmt_interval(stats.Interval(-0.5, -1.04, 0.04, 3), 1) == "-0.5 [-1.0, 0.0]"


def test_frontier_is_drawn_over_the_live_weights_when_every_run_records_them(tmp_path):
    runs = {("final", "a", 1): _image_run(90.0, 0.6, {0.0: 90.0, 0.9: 85.0}, {0.0: 90.0, 0.5: 89.0, 0.7: 80.0})}
    study = report.load_study(_write_study(tmp_path / "s", runs))
    assert report.measures_live_weights(study, "final")
    series = report.frontier_series(study, "final", "image", live=True)["a"]
    assert series["sparsity"] == pytest.approx(60.0)  # live: 60%; all regularized: 80%
    assert series["curve"] == pytest.approx([(60.0, 90.0), (60.0, 89.0), (70.0, 80.0)])
    assert report.frontier_series(study, "final", "image")["a"]["sparsity"] == pytest.approx(80.0)
    runs[("final", "b", 1)] = _image_run(90.0, 0.1, {0.0: 90.0, 0.9: 70.0}, None)  # one run without it
    study = report.load_study(_write_study(tmp_path / "t", runs))
    assert not report.measures_live_weights(study, "final")
    header = report.stage_table(study, "final", "image").splitlines()[2]  # both curves' columns
    assert "accuracy at 90% pruned" in header and "accuracy at 70% of live pruned" in header


def test_the_shipped_image_study_records_are_read_as_image_runs():
    """Image runs record task 'image-classification' (the pipeline name); the report reads them as the
    image task, and its tuning table holds each run's accuracy and live sparsity as recorded."""
    study_dir = REPO / "docs" / "studies" / "image_converged"
    study = report.load_study(study_dir)
    assert report.task_of(study) == "image"
    table = report.stage_table(study, "tune", "image").splitlines()
    header = [c.strip() for c in table[2].strip("|").split("|")]
    accuracy, live = header.index("accuracy (%)"), header.index("≤ 1e-03, live (%)")
    for results_path in sorted((study_dir / "tune").glob("*/seed1/all_results.json")):
        raw = json.loads(results_path.read_text())
        assert raw["task"] == "image-classification"
        row = next(line for line in table if line.startswith(f"| {results_path.parent.parent.name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[accuracy]) == pytest.approx(raw["eval_accuracy"], abs=0.005)
        assert float(cells[live]) == pytest.approx(100 * raw["sparsity"]["live"]["1e-03"], abs=0.05)
