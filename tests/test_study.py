"""Study planning, aggregation, claims, report and resumability with fake run results."""
import math
import os

import pytest

from configs import pointins_indoor
from configs import pointins_outdoor
from configs import study_indoor
from configs import study_outdoor
from pointins_jax.study import execution
from pointins_jax.study import planning
from pointins_jax.study import reporting
from pointins_jax.study import verdicts


def _plan(tables="table3+table5+table8+table10+table13", seeds=2, base=None, task="insseg"):
  config = study_indoor.get_config(f"small,tables={tables},seeds={seeds}")
  base = base or pointins_indoor.get_config("demo")
  return planning.make_plan(config, base, task), base


def _fake_runner(scores, calls=None):
  """Runner whose primary metric is scores[variant] + 0.01 * seed (others derived)."""

  def runner(run, run_dir):
    assert os.path.isdir(run_dir)
    if calls is not None:
      calls.append(run.name)
    # Offset quality of the variant's pretraining (metres / fractions), as experiments.study.
    offsets = dict(offset_dist_median=0.12 + 0.01 * run.seed, offset_dist_mean=0.2,
                   offset_baseline_median=0.4, offset_closer_fraction=0.7,
                   offset_unsup_AP25=0.3, offset_dist_median_start=0.4,
                   offset_closer_fraction_start=0.5)
    if run.kind == "unsup":
      pointins = 0.3 if run.variant == planning.POINTINS else 0.05
      return {"PointINS": dict(mAP=pointins, AP50=pointins, AP25=pointins, **offsets),
              "HDBSCAN": dict(mAP=0.2, AP50=0.3, AP25=0.4),
              "Felzenszwalb": dict(mAP=0.1, AP50=0.2, AP25=0.3),
              "Oracle": dict(mAP=0.9, AP50=0.95, AP25=0.97)}
    value = scores.get(run.variant, 0.2) + 0.01 * run.seed
    return dict(mIoU=value, mAP=value, AP50=value + 0.1, AP25=value + 0.2, **offsets)

  return runner


def test_shared_rows_are_one_run():
  plan, _ = _plan()
  names = [r.name for r in plan.runs]
  assert len(names) == len(set(names))
  rows = {t.key: {r.label: r.variant for r in t.rows} for t in plan.tables}
  # Full PointINS fills a row of every probe table (indoor default prior is the Gamma one).
  assert rows["table3"]["+ ODR + SCR (PointINS)"] == planning.POINTINS
  assert rows["table5"]["Gamma"] == planning.POINTINS
  assert rows["table8"]["ODR then SCR (PointINS)"] == planning.POINTINS
  assert rows["table10"]["warm-up 0.1"] == planning.POINTINS
  # 'No regularisation' (odr off) is Table 3's '+ SCR'.
  assert rows["table5"]["No regularisation (no ODR)"] == rows["table3"]["+ SCR"]
  assert all(t.rows[0].variant == planning.RANDOM_INIT for t in plan.tables if t.key != "table13")
  probe_variants = {r.variant for r in plan.runs if r.kind == "probe"}
  # random, dos, offset-only, odr-only, scr-only, pointins, supervised ceiling, lognormal,
  # 2 fitted, 2 layouts, 2 warm-ups: 14 variants x 2 seeds, plus 2 unsup x 2 seeds.
  assert len(probe_variants) == 14
  assert len(plan.runs) == 14 * 2 + 2 * 2
  assert [r.seed for r in plan.runs[:16]] == [0] * 16  # seed-major, Table 13 included
  assert [r.kind for r in plan.runs[14:16]] == ["unsup", "unsup"]
  # Every probe table ends with the ceiling, Table 13 with ground-truth offsets.
  assert all(t.rows[-1].variant == planning.SUPERVISED for t in plan.tables if t.key != "table13")
  assert plan.tables[-1].rows[-1].method == "Oracle"
  ceiling = [r for r in plan.runs if r.variant == planning.SUPERVISED]
  assert ceiling and not any(r.pretrained for r in ceiling)


def test_outdoor_gamma_differs_lognormal_is_base():
  base = pointins_outdoor.get_config("demo")
  plan, _ = _plan(tables="table5", seeds=1, base=base, task="panseg")
  rows = {r.label: r.variant for r in plan.tables[0].rows}
  assert rows["LogNormal"] == planning.POINTINS
  assert rows["Gamma"] != planning.POINTINS
  assert plan.tables[0].metrics == planning.PROBE_METRICS["panseg"]


def test_bad_config_fields_are_named():
  with pytest.raises(ValueError, match="config.tables"):
    planning.parse_tables("table3+table99")
  with pytest.raises(KeyError, match="offset.nope"):
    planning.canonical_variant({"offset.nope": 1}, pointins_indoor.get_config("demo"))


def test_mean_std():
  stat = verdicts.mean_std([0.1, 0.3, float("nan")])
  assert stat.n == 2 and stat.mean == pytest.approx(0.2)
  assert stat.std == pytest.approx(math.sqrt(0.02))  # ddof=1
  assert str(stat) == "20.0 ± 14.1"
  assert verdicts.mean_std([0.5]).std == 0.0
  assert verdicts.mean_std([]).n == 0 and str(verdicts.mean_std([])) == "n/a"


def test_aggregate_over_seeds(tmp_path):
  plan, _ = _plan(tables="table3", seeds=2)
  records = execution.execute(plan, str(tmp_path), _fake_runner({planning.POINTINS: 0.5}),
                              progress=False, log=lambda *_: None)
  cell = verdicts.aggregate(plan, records)["table3"]["+ ODR + SCR (PointINS)"]["mAP"]
  assert cell.n == 2 and cell.mean == pytest.approx(0.505)
  assert cell.std == pytest.approx(math.sqrt(2 * 0.005 ** 2))


def _claims(tmp_path, scores, tables="table3+table5+table8+table10+table13", seeds=2):
  plan, base = _plan(tables=tables, seeds=seeds)
  records = execution.execute(plan, str(tmp_path), _fake_runner(scores), progress=False,
                              log=lambda *_: None)
  return {c.text: c.verdict for c in verdicts.claims(
      plan, verdicts.aggregate(plan, records), base, robust_tolerance=0.05)}


def test_claims_agree_when_pointins_wins(tmp_path):
  judged = _claims(tmp_path, {planning.POINTINS: 0.5, "dos": 0.2})
  # Priors: pointins 0.5 vs the rest 0.2 -> spread 0.3 > tolerance.
  robust = [v for k, v in judged.items() if "robust" in k]
  assert robust == ["disagrees"]
  assert [v for k, v in judged.items() if "robust" not in k] == ["agrees"] * 8


def test_ceiling_is_not_a_competitor(tmp_path):
  """A ceiling far above every method (as real ones are) must not enter the prior spread
  (Table 5) or the warm-ups PointINS must beat (Table 10)."""
  plan, base = _plan()
  records = execution.execute(
      plan, str(tmp_path), _fake_runner({planning.POINTINS: 0.5, planning.SUPERVISED: 0.9}),
      progress=False, log=lambda *_: None)
  judged = {c.text: c for c in verdicts.claims(plan, verdicts.aggregate(plan, records), base,
                                               robust_tolerance=0.05)}
  warmup = next(c for k, c in judged.items() if "warm-up" in k)
  assert warmup.verdict == "agrees"  # 0.5 beats warm-ups 0 and 0.3 (0.2); ceiling 0.9
  assert "Supervised" not in warmup.evidence.split("[")[0]
  robust = next(c for k, c in judged.items() if "robust" in k)
  # gamma (= PointINS) 0.5 and three priors at 0.2: spread 0.3, not 0.4 with the ceiling.
  assert "spread over 4 priors 30.0 points" in robust.evidence
  assert "Supervised" not in robust.evidence


def test_claims_disagree_and_inconclusive(tmp_path):
  # The ceiling (supervised, default 0.2) ties the floor (random init, 0.2): the metric
  # does not resolve differences, so ties stay inconclusive.
  judged = list(_claims(tmp_path, {planning.POINTINS: 0.2, "dos": 0.5, "odr=0": 0.2},
                        tables="table3+table5").values())
  # over DOS: loses; over random init (0.2): ties; semantics below DOS; regularisers: ties
  # with SCR-only (within noise) and loses to none.
  assert judged[:4] == ["disagrees", "inconclusive", "disagrees", "inconclusive"]
  assert judged[4] == "agrees"  # every prior scores 0.2 (+ seed) -> robust
  assert judged[5:] == ["not run"] * 4


def test_ties_disagree_when_the_ceiling_clears_the_floor(tmp_path):
  """A claimed gain that is absent where the ceiling shows the metric can see one is not
  reproduced: 'disagrees', not 'inconclusive'."""
  plan, base = _plan(tables="table3+table13", seeds=2)
  scores = {planning.POINTINS: 0.0, "dos": 0.0, planning.RANDOM_INIT: 0.0, planning.SUPERVISED: 0.6}
  records = execution.execute(plan, str(tmp_path), _fake_runner(scores), progress=False,
                              log=lambda *_: None)
  claims = {c.text: c for c in verdicts.claims(plan, verdicts.aggregate(plan, records), base,
                                               robust_tolerance=0.05)}
  over_dos = claims["The offset branch with ODR and SCR improves instance metrics over DOS."]
  assert over_dos.verdict == "disagrees"
  assert "(disagrees)" in over_dos.evidence and "resolves differences" in over_dos.evidence
  # The same zeros with the ceiling at the floor are inconclusive.
  scores[planning.SUPERVISED] = 0.0
  records = execution.execute(plan, str(tmp_path / "flat"), _fake_runner(scores),
                              progress=False, log=lambda *_: None)
  flat = {c.text: c for c in verdicts.claims(plan, verdicts.aggregate(plan, records), base,
                                             robust_tolerance=0.05)}
  assert flat[over_dos.text].verdict == "inconclusive"
  # Table 13: ground-truth offsets (0.9) clear random-init offsets (0.05); pretrained
  # offsets (0.3) beat random-init ones and HDBSCAN (0.2) / Felzenszwalb (0.1).
  assert flat["Pretrained PointINS offsets beat the offsets of a random-init network."
              ].verdict == "agrees"


def test_claim_verdict_and_evidence_agree(tmp_path):
  """The 'preserves semantics' claim: its evidence must say what the verdict says."""
  plan, base = _plan(tables="table3", seeds=2)
  for dos, verdict, phrase in ((0.2, "agrees", "not below DOS"), (0.6, "disagrees",
                                                                  "below DOS by more")):
    records = execution.execute(plan, str(tmp_path / str(dos)), _fake_runner(
        {planning.POINTINS: 0.3, "dos": dos}), progress=False, log=lambda *_: None)
    claim = next(c for c in verdicts.claims(plan, verdicts.aggregate(plan, records), base,
                                            robust_tolerance=0.05) if "preserves" in c.text)
    assert claim.verdict == verdict and phrase in claim.evidence
    assert "disagrees" not in claim.evidence and "agrees" not in claim.evidence


def test_report(tmp_path):
  plan, base = _plan(seeds=2)
  records = execution.execute(plan, str(tmp_path), _fake_runner({planning.POINTINS: 0.5}),
                              progress=False, log=lambda *_: None)
  path = reporting.write_report(str(tmp_path), plan, records, base,
                                budget={"pretraining": "2 steps"}, machine={"CPU count": 2},
                                wall_s=1.0, robust_tolerance=0.05)
  text = open(path, encoding="utf-8").read()
  for needle in ("2 steps", "CPU count", "seeds**: [0, 1]", "Table 3", "Table 13",
                 "50.5 ± 0.7", "**agrees**", "figures/table3.png"):
    assert needle in text, needle
  # Every table shows each row's final offset quality (median 12 / 13 cm over the seeds);
  # rows without offsets (the baselines of Table 13) read n/a.
  assert text.count("Offset quality at the end") == len(plan.tables)
  assert ("| + ODR + SCR (PointINS) | 40.0 ± 0.0 | 12.5 ± 0.7 | 20.0 ± 0.0 | 40.0 ± 0.0 | "
          "50.0 ± 0.0 | 70.0 ± 0.0 |") in text
  assert "| HDBSCAN | n/a | n/a | n/a | n/a | n/a | n/a | n/a | 0 |" in text
  assert "Supervised ceiling" in text and "Ground-truth offsets (ceiling)" in text
  assert "Provisional" not in text
  del records[plan.runs[0].name]
  reporting.write_report(str(tmp_path), plan, records, base, budget={}, machine={}, wall_s=1.0,
                         robust_tolerance=0.05)
  text = open(path, encoding="utf-8").read()
  assert f"**Provisional**: {len(plan.runs) - 1} of {len(plan.runs)} runs" in text
  for table in plan.tables:
    assert os.path.getsize(tmp_path / "figures" / f"{table.key}.png") > 1000


def test_records_dir_and_config_hash(tmp_path):
  """Records in a committed folder let a fresh workdir continue; a changed config redoes."""
  plan, _ = _plan(tables="table3", seeds=1)
  calls, records_dir = [], str(tmp_path / "docs_records")
  runner = _fake_runner({}, calls)
  hashes = {r.name: "a" for r in plan.runs}
  fingerprint = lambda run: hashes[run.name]  # noqa: E731
  execution.execute(plan, str(tmp_path / "w1"), runner, records_dir=records_dir,
                    fingerprint=fingerprint, progress=False, log=lambda *_: None)
  assert sorted(os.listdir(records_dir)) == sorted(f"{r.name}.json" for r in plan.runs)
  calls.clear()
  execution.execute(plan, str(tmp_path / "fresh"), runner, records_dir=records_dir,
                    fingerprint=fingerprint, progress=False, log=lambda *_: None)
  assert not calls  # a fresh workdir (checkout) continues from the records
  hashes[plan.runs[1].name] = "b"
  said = []
  execution.execute(plan, str(tmp_path / "fresh"), runner, records_dir=records_dir,
                    fingerprint=fingerprint, progress=False, log=said.append)
  assert calls == [plan.runs[1].name] and "another config" in said[0]


def test_finished_runs_are_skipped(tmp_path):
  plan, _ = _plan(tables="table3+table13", seeds=1)
  calls = []
  runner = _fake_runner({}, calls)
  execution.execute(plan, str(tmp_path), runner, progress=False, log=lambda *_: None)
  assert sorted(calls) == sorted(r.name for r in plan.runs)
  calls.clear()
  records = execution.execute(plan, str(tmp_path), runner, progress=False, log=lambda *_: None)
  assert not calls and len(records) == len(plan.runs)
  os.remove(execution.result_path(str(tmp_path), plan.runs[2]))
  execution.execute(plan, str(tmp_path), runner, progress=False, log=lambda *_: None)
  assert calls == [plan.runs[2].name]


def test_a_failed_run_is_not_marked_finished(tmp_path):
  plan, _ = _plan(tables="table3", seeds=1)
  fake = _fake_runner({})

  def runner(run, run_dir):
    if run.variant == "dos":
      raise RuntimeError("killed")
    return fake(run, run_dir)

  with pytest.raises(RuntimeError):
    execution.execute(plan, str(tmp_path), runner, progress=False, log=lambda *_: None)
  done = {r.name for r in plan.runs if execution.load_result(str(tmp_path), r)}
  # The ceiling and random_init ran first; dos failed; the rest did not start.
  assert [r.variant for r in plan.runs[:3]] == [planning.SUPERVISED, planning.RANDOM_INIT, "dos"]
  assert done == {plan.runs[0].name, plan.runs[1].name}
  # The failed attempt's time is kept and added when the run finishes.
  dos = next(r for r in plan.runs if r.variant == "dos")
  assert os.path.isfile(os.path.join(execution.run_dir(str(tmp_path), dos), "wall_s_before.json"))
  with open(os.path.join(execution.run_dir(str(tmp_path), dos), "wall_s_before.json"), "w") as f:
    f.write("100.0")
  records = execution.execute(plan, str(tmp_path), fake, progress=False, log=lambda *_: None)
  assert records[dos.name]["wall_s"] >= 100.0


@pytest.mark.slow
def test_real_tiny_study(tmp_path):
  """One real run of the CLI (2 + 2 steps, Table 3 only; ~15 min on 2 CPU cores)."""
  import subprocess
  import sys
  subprocess.run([sys.executable, "-m", "experiments.study", "--config",
                  "configs/study_indoor.py:tiny,tables=table3", "--workdir", str(tmp_path)],
                 check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert "Table 3" in open(tmp_path / "report.md", encoding="utf-8").read()


def test_all_zero_priors_are_inconclusive_not_robust(tmp_path):
  """Every prior at AP 0 (nothing learned) must not read as 'robust to the prior'."""
  plan, base = _plan(tables="table5", seeds=2)
  zero = lambda run, run_dir: dict(mIoU=0.1, mAP=0.0, AP50=0.0, AP25=0.0)  # noqa: E731
  records = execution.execute(plan, str(tmp_path), zero, progress=False, log=lambda *_: None)
  judged = {c.text: c for c in verdicts.claims(plan, verdicts.aggregate(plan, records), base,
                                               robust_tolerance=0.05)}
  robust = [c for text, c in judged.items() if "robust" in text]
  assert [c.verdict for c in robust] == ["inconclusive"]
  assert "every prior scores mAP 0" in robust[0].evidence


def test_fingerprint_follows_what_a_run_uses():
  """A run's config hash changes with the configs it uses and only with those."""
  from configs import probe_indoor
  config = study_indoor.get_config("small,tables=table3+table13")
  base = pointins_indoor.get_config("demo")
  probe = probe_indoor.get_config("linear_insseg,demo")
  ceiling = probe_indoor.get_config("finetune_insseg,demo")
  plan = planning.make_plan(config, base, "insseg")
  by_variant = {(r.variant, r.kind): r for r in plan.runs if r.seed == 0}
  before = execution.make_fingerprint(config, base, probe, ceiling)
  longer = ceiling.copy_and_resolve_references()
  longer.train.total_steps += 1
  after = execution.make_fingerprint(config, base, probe, longer)
  changed = {key for key, run in by_variant.items() if before(run) != after(run)}
  assert changed == {(planning.SUPERVISED, "probe")}
  cosmetic = base.copy_and_resolve_references()
  cosmetic.train.progress_bar = not cosmetic.train.progress_bar
  assert execution.make_fingerprint(config, cosmetic, probe, ceiling)(
      by_variant[("dos", "probe")]) == before(by_variant[("dos", "probe")])
  seed1 = next(r for r in plan.runs if r.variant == "dos" and r.seed == 1)
  assert before(seed1) != before(by_variant[("dos", "probe")])


def test_a_folder_of_another_config_is_refused(tmp_path):
  execution.claim_folder(str(tmp_path / "run"), "aaa")
  execution.claim_folder(str(tmp_path / "run"), "aaa")  # the same config resumes
  with pytest.raises(ValueError, match="another config .*fresh --workdir"):
    execution.claim_folder(str(tmp_path / "run"), "bbb")


def test_table11_is_outdoor_detection_on_shared_exports(tmp_path):
  """Table 11: 3 encoders x 2 modes per seed, on the same exports as the other tables."""
  config = study_outdoor.get_config("small,tables=table3+table11,seeds=2")
  base = pointins_outdoor.get_config("demo")
  plan = planning.make_plan(config, base, "panseg")
  table = next(t for t in plan.tables if t.key == "table11")
  assert [r.label for r in table.rows][:3] == ["Random init, decoder", "DOS, decoder",
                                               "PointINS, decoder"]
  detect = [r for r in plan.runs if r.kind.startswith("detect_")]
  assert len(detect) == 2 * 2 * 3
  assert {r.variant for r in detect} == {planning.RANDOM_INIT, planning.DOS, planning.POINTINS}
  assert "detect_finetune-pointins__seed1" in {r.name for r in detect}
  fake = _fake_runner({})

  def runner(run, run_dir):
    if run.kind.startswith("detect_"):
      value = 0.3 if run.variant == planning.POINTINS else 0.1
      return dict(mAP=value + 0.01 * run.seed, NDS=value)
    return fake(run, run_dir)

  records = execution.execute(plan, str(tmp_path), runner, progress=False, log=lambda *_: None)
  stats = verdicts.aggregate(plan, records)
  assert stats["table11"]["PointINS, finetune"]["mAP"].mean == pytest.approx(0.305)
  judged = {c.text: c.verdict for c in verdicts.claims(plan, stats, base,
                                                       robust_tolerance=0.05)}
  assert judged["PointINS improves detection over DOS (decoder probing and finetuning on "
                "few labels)."] == "agrees"
  with pytest.raises(ValueError, match="table11"):
    planning.make_plan(study_indoor.get_config("small,tables=table11"),
                       pointins_indoor.get_config("demo"), "insseg")
