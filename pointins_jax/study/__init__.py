"""The paper's comparison tables at small scale: planning, resumable execution, verdicts,
report.

`experiments.study` drives this package; nothing here imports JAX, so the planning,
aggregation, claim verdicts and report are testable with fake run results.

  planning    tables, variants and the de-duplicated runs that fill them (`make_plan`);
  execution   running the plan resumably: per-run records, config fingerprints (`execute`);
  verdicts    seed statistics and the paper claims judged on them (`aggregate`, `claims`);
  reporting   the markdown report and its figures (`write_report`).

A *variant* is a set of overrides on the pretraining config (dotted keys under
`offset.`), e.g. `{"offset.odr": False}`. Its canonical name comes from the overrides
that differ from the base config, so rows that mean the same run in different tables
(full PointINS = '+ODR+SCR' = 'Gamma prior' (indoor) = 'warm-up 0.1') share one name and
are computed once. A *run* is a variant x seed x kind:
  probe   pretrain the variant (skipped for 'random_init' and 'supervised'), then
          linear-probe it ('supervised': finetune a random-init encoder with the labels,
          the ceiling row of every table);
  unsup   Table 13: unsupervised instances from the variant's exported offset head;
  detect_decoder / detect_finetune   Table 11 (outdoor): the CenterPoint-style detection
          probe on the variant's export, encoder frozen / finetuned on `detection_label_
          fraction` of the labelled scenes.
Each run's result record (run, metrics, wall time, config hash) lands in
`RECORDS/<run name>.json` (the study config's `records_dir`, committed under docs/) or
`WORKDIR/runs/<run name>/result.json`; a record whose config hash matches marks the run
finished, so re-running the study, even on a fresh checkout, skips it (the pretraining and
probe loops resume from their own orbax checkpoints inside an unfinished run).
"""
