# m3oe-lightning — every command a user needs. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# torch is installed first, on its own, from this pin: the CPU wheel here. GPU users override it,
# e.g. `make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=
# test processes (pytest-xdist; whole files per process, since a file's tests share module fixtures); 0 = serial
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install train test page-synthetic page-synthetic-report federated-rec federated-rec-setting \
	federated-rec-report bench bench-scaling ui movielens movielens-report reproduce reproduce-quick report verdict diagnose \
	federated federated-report bench-reproduce clean clean-logs clean-checkpoints predict export serve tune \
	tune-study tuning-report bf16-accuracy bf16-accuracy-report reproduce-tuned tuned-report automl-arms automl-report

# Table 2/3 of the M3oE paper: every row of conf/experiment/paper/ (Hydra's glob() does not expand the
# options of a subfolder, so the list is built here) × SEEDS, as one Hydra multirun.
PAPER_ROWS := $(shell ls conf/experiment/paper | sed -n 's|^\(.*\)\.yaml$$|paper/\1|p' | paste -sd, -)
# our diagnostic M3oE variants (conf/experiment/diagnose/), reported under Table 3
DIAGNOSE_ROWS := $(shell ls conf/experiment/diagnose | sed -n 's|^\(.*\)\.yaml$$|diagnose/\1|p' | paste -sd, -)
DIAGNOSE_SEEDS ?= 2022,2023,2024
SEEDS ?= 2022,2023,2024,2025,2026
JOBS ?= 1
QUICK_EPOCHS ?= 1
QUICK_OUT ?= logs/reproduce-quick
# JOBS > 1: the joblib launcher (joblib caps each worker's threads at cores / JOBS)
LAUNCHER = $(if $(filter-out 1,$(JOBS)),hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS))
PAPER_SWEEP = $(BIN)/python -m m3oe_lightning.train -m experiment=$(PAPER_ROWS) $(LAUNCHER) \
	trainer.enable_progress_bar=false trainer.enable_model_summary=false

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project (idempotent)

train: $(STAMP) ## train M3oE on MovieLens-1M with the paper's settings (extra Hydra overrides: ARGS="...")
	$(BIN)/python -m m3oe_lightning.train $(ARGS)

# Tune one row in a resumable Optuna study on validation: make tune ROW=paper/m3oe [ARGS="tune.sampler=tpe ..."]
ROW ?=
tune: $(STAMP) ## tune a row (default: the paper's lr grid), resumable → logs/tune/<study>/, conf/experiment/tuned/
	$(BIN)/python -m m3oe_lightning.tune $(if $(ROW),experiment=$(ROW)) trainer.enable_model_summary=false $(ARGS)

# The tuning study: every Table-2 row (TUNE_ROWS) on the paper's lr grid under PROTOCOL, one resumable Optuna
# study per row; each study's report (results.md/csv, study.json) is written into TUNE_OUT to be committed
TABLE2_ROWS := mlp star m2m adatt adatt_sp m3oe $(foreach arch,shbot mmoe ple,$(arch)_mdl $(arch)_mtl $(arch)_mdmt)
TUNE_ROWS ?= $(TABLE2_ROWS)
PROTOCOL ?= paper
TUNE_OUT ?= experiments/movielens/tuning
tune-study: $(STAMP) ## tune every Table-2 row under PROTOCOL (resumable; reports → TUNE_OUT), then the tuning table
	status=0; for row in $(TUNE_ROWS); do $(BIN)/python -m m3oe_lightning.tune experiment=paper/$$row \
		protocol=$(PROTOCOL) trainer.enable_model_summary=false tune.results_dir=$(TUNE_OUT) $(ARGS) || status=1; \
	done; $(MAKE) tuning-report && exit $$status

tuning-report: $(STAMP) ## the tuning table (TUNE_OUT/README.md) from the studies' generated files
	$(BIN)/python -m m3oe_lightning.reports.tuning --dir $(TUNE_OUT)

test: $(STAMP) ## run the whole test suite (TEST_WORKERS processes, default 2)
	$(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

movielens: $(STAMP) ## M3oE paper + released presets × random + ordered splits on ML-1M, then the report
	$(BIN)/python -m m3oe_lightning.train -m experiment=m3oe_paper,m3oe_released data.split=random,ordered \
		+logger.tags.study=movielens trainer.enable_progress_bar=false $(ARGS)
	$(MAKE) movielens-report PRESETS_OUT=experiments/movielens

# the committed one, experiments/movielens/presets.md (and its README summary), is written by make movielens
PRESETS_OUT ?= logs/reports/movielens
movielens-report: $(STAMP) ## presets.md (+ PNG) → PRESETS_OUT from the MLflow store
	$(BIN)/python -m m3oe_lightning.reports.presets --study movielens --out $(PRESETS_OUT) --name presets.md \
		$(if $(filter experiments/%,$(PRESETS_OUT)),--readme README.md)

reproduce: $(STAMP) ## Table 2 + 3 (MovieLens-1M): every paper row × SEEDS, resumable (finished runs are skipped), then the report
	$(call archive_import,$(PAPER_ARCHIVE))
	$(PAPER_SWEEP) seed=$(SEEDS) skip_finished=true \
		hydra.callbacks.mlflow_sweep.name=reproduce $(ARGS); status=$$?; \
	$(MAKE) report REPORT_OUT=experiments/movielens && exit $$status

reproduce-quick: $(STAMP) ## smoke: every paper row once (seed 2022, QUICK_EPOCHS epochs), report → QUICK_OUT
	$(PAPER_SWEEP) seed=2022 trainer.max_epochs=$(QUICK_EPOCHS) logger.tags.study=paper-quick \
		hydra.callbacks.mlflow_sweep.name=reproduce-quick $(ARGS); status=$$?; \
	$(MAKE) report REPORT_STUDY=paper-quick REPORT_OUT=$(QUICK_OUT) REPORT_COMMAND="make reproduce-quick" && exit $$status

diagnose: $(STAMP) ## our M3oE diagnostics (e.g. w/o STAR layer) × DIAGNOSE_SEEDS, resumable, then the report
	$(call archive_import,$(PAPER_ARCHIVE))
	$(BIN)/python -m m3oe_lightning.train -m experiment=$(DIAGNOSE_ROWS) seed=$(DIAGNOSE_SEEDS) $(LAUNCHER) \
		trainer.enable_progress_bar=false trainer.enable_model_summary=false skip_finished=true \
		hydra.callbacks.mlflow_sweep.name=diagnose $(ARGS); status=$$?; \
	$(MAKE) report REPORT_OUT=experiments/movielens && exit $$status

REPORT_STUDY ?= paper
# the committed report, experiments/movielens, is written by make reproduce / make diagnose
REPORT_OUT ?= logs/reports/movielens
REPORT_COMMAND ?= make reproduce
# the committed report's runs are archived beside it (PAPER_ARCHIVE; see "A study's finished runs are archived" below)
PAPER_ARCHIVE = experiments/movielens/runs
COMMITTED_PAPER_REPORT = $(filter experiments/movielens,$(patsubst %/,%,$(REPORT_OUT)))
report: $(STAMP) ## README.md + results.csv + PNGs (Table 2/3 against the paper) in REPORT_OUT from the MLflow store
	$(if $(COMMITTED_PAPER_REPORT),$(call archive_import,$(PAPER_ARCHIVE)))
	$(if $(COMMITTED_PAPER_REPORT),$(call archive_export,$(REPORT_STUDY),$(PAPER_ARCHIVE),m3oe-lightning))
	$(BIN)/python -m m3oe_lightning.reports.paper --study $(REPORT_STUDY) --out $(REPORT_OUT) --command "$(REPORT_COMMAND)"

# Issue #12, parts b and c: every Table-2 row at the lr its study chose on validation (conf/experiment/tuned/, made
# by make tune-study PROTOCOL=...) × SEEDS under PROTOCOL, and the Table-3 variants of TUNED_VARIANTS at M3oE's tuned
# lr (they are M3oE with one part changed; not tuned apart), as resumable Hydra multiruns (finished runs are skipped;
# the runs are archived in TUNED_OUT/runs, so a sitting on a fresh machine resumes), then its report and verdict.
# Part b (paper) is all of Table 2; part c (released) the rows the issue names and Table 3.
TUNED_ROWS_paper = $(TABLE2_ROWS)
TUNED_ROWS_released = mlp star m2m m3oe shbot_mdmt mmoe_mdmt ple_mdmt
TUNED_ROWS ?= $(TUNED_ROWS_$(PROTOCOL))
TABLE3_VARIANTS := m3oe_wo_automl m3oe_concat m3oe_gated m3oe_wo_domain m3oe_wo_task m3oe_wo_domain_task
TUNED_VARIANTS_paper =
TUNED_VARIANTS_released = $(TABLE3_VARIANTS)
TUNED_VARIANTS ?= $(TUNED_VARIANTS_$(PROTOCOL))
TUNED_OUT ?= experiments/movielens/tuned-$(PROTOCOL)
TUNED_STUDY = tuned-$(PROTOCOL)
comma := ,
space := $(subst ,, )
TUNED_EXPERIMENTS = $(subst $(space),$(comma),$(strip $(foreach row,$(TUNED_ROWS),tuned/paper-$(row)-movielens1m-$(PROTOCOL))))
TUNED_VARIANT_EXPERIMENTS = $(subst $(space),$(comma),$(strip $(foreach row,$(TUNED_VARIANTS),paper/$(row))))
# M3oE's tuning study under PROTOCOL and its generated config; its lr is read from that when the variants run
M3OE_TUNED_STUDY = paper-m3oe-movielens1m-$(PROTOCOL)
M3OE_TUNED = conf/experiment/tuned/$(M3OE_TUNED_STUDY).yaml
M3OE_TUNED_LR = $$($(BIN)/python -c "from omegaconf import OmegaConf; print(OmegaConf.load('$(M3OE_TUNED)').optimizer.lr)")
# a resumable multirun of study $(1) under PROTOCOL × SEEDS (the tag is forced with ++: in a multirun over
# `experiment` the primary config has no study tag yet to override)
study_sweep = $(BIN)/python -m m3oe_lightning.train -m protocol=$(PROTOCOL) seed=$(SEEDS) $(LAUNCHER) \
	trainer.enable_progress_bar=false trainer.enable_model_summary=false skip_finished=true \
	++logger.tags.study=$(1) hydra.callbacks.mlflow_sweep.name=$(1) $(ARGS)
TUNED_SWEEP = $(call study_sweep,$(TUNED_STUDY))
reproduce-tuned: $(STAMP) ## Table 2 (+ TUNED_VARIANTS) at the tuned lr × SEEDS under PROTOCOL (resumable), report + verdict → TUNED_OUT
	$(if $(TUNED_VARIANTS),@test -f $(M3OE_TUNED) || { echo "error: $(M3OE_TUNED) is missing (the variants run at \
		M3oE's tuned lr): run make tune-study PROTOCOL=$(PROTOCOL) TUNE_ROWS=m3oe first" >&2; exit 2; })
	$(call archive_import,$(TUNED_OUT)/runs)
	$(TUNED_SWEEP) experiment=$(TUNED_EXPERIMENTS) $(if $(TUNED_VARIANTS),&& $(TUNED_SWEEP) \
		experiment=$(TUNED_VARIANT_EXPERIMENTS) optimizer.lr=$(M3OE_TUNED_LR)); status=$$?; \
	$(MAKE) tuned-report && exit $$status

tuned-report: $(STAMP) ## the tuned study's report (Table 2, verdict) → TUNED_OUT from the MLflow store and its archive
	$(call archive_import,$(TUNED_OUT)/runs)
	$(call archive_export,$(TUNED_STUDY),$(TUNED_OUT)/runs,m3oe-lightning)
	$(BIN)/python -m m3oe_lightning.reports.paper --study $(TUNED_STUDY) --out $(TUNED_OUT) \
		--command "make reproduce-tuned PROTOCOL=$(PROTOCOL)"

# Issue #12, part d: M3oE's AutoML arms (paper, joint, darts) and controls (frozen, off) × SEEDS under PROTOCOL, all
# from M3oE's tuned config (its lr for every arm); the `paper` arm is the same configuration as part b's M3oE row, so
# a finished run of that is reused, not rerun. Resumable (archived in AUTOML_OUT/runs); report → AUTOML_OUT
AUTOML_OUT ?= experiments/movielens/automl-$(PROTOCOL)
AUTOML_STUDY = automl-$(PROTOCOL)
AUTOML_SWEEP = $(call study_sweep,$(AUTOML_STUDY)) experiment=tuned/$(M3OE_TUNED_STUDY)
automl-arms: $(STAMP) ## M3oE's AutoML arms + controls × SEEDS under PROTOCOL at the tuned lr (resumable), report → AUTOML_OUT
	$(call archive_import,$(TUNED_OUT)/runs)
	$(call archive_import,$(AUTOML_OUT)/runs)
	$(AUTOML_SWEEP) automl.mode=alternate,joint,frozen,off && $(AUTOML_SWEEP) automl.every=1 automl.source=val; \
		status=$$?; $(MAKE) automl-report && exit $$status

automl-report: $(STAMP) ## the AutoML arms' report (arms, controls, the default chosen on validation) → AUTOML_OUT
	$(call archive_import,$(TUNED_OUT)/runs)
	$(call archive_import,$(AUTOML_OUT)/runs)
	$(call archive_export,$(AUTOML_STUDY),$(AUTOML_OUT)/runs,m3oe-lightning)
	$(BIN)/python -m m3oe_lightning.reports.automl --tuned $(M3OE_TUNED_STUDY) --out $(AUTOML_OUT) \
		--command "make automl-arms PROTOCOL=$(PROTOCOL)"

# the verdict table alone, from a committed per-run file (for a study whose store is gone)
VERDICT_FROM ?= experiments/movielens/results.csv
verdict: $(STAMP) ## which of the paper's Table 2–3 claims hold: VERDICT_FROM (a report's results.csv) → its folder's verdict.md
	$(BIN)/python -m m3oe_lightning.reports.paper --verdict-from $(VERDICT_FROM) --out $(dir $(VERDICT_FROM)) \
		--name verdict.md --command "make verdict VERDICT_FROM=$(VERDICT_FROM)"

# The federated comparison on MovieLens-1M (region partition: a client per zip-code region, one held out):
# the strategies of FED_ALGORITHMS and the presets of FED_VARIANTS (federated M3oE, the centralized
# reference: conf/experiment/federated/) × FED_SEEDS, two Hydra multiruns, resumable (finished runs skipped).
FED_ALGORITHMS ?= local,fedavg,fedprox,ditto,page
FED_VARIANTS ?= federated/fedavg_m3oe,federated/page_m3oe,federated/centralized
FED_SEEDS ?= 2022,2023,2024
FED_ROUNDS ?= 8
FED_SWEEP = $(BIN)/python -m m3oe_lightning.federate -m data=movielens1m model=m3oe seed=$(FED_SEEDS) \
	federated.partition=region federated.heldout_clients=1 federated.rounds=$(FED_ROUNDS) skip_finished=true \
	+logger.tags.study=federated hydra.callbacks.mlflow_sweep.name=federated $(ARGS)
federated: $(STAMP) ## federated comparison (local/fedavg/fedprox/ditto/page/federated M3oE/centralized × FED_SEEDS), then its report
	$(FED_SWEEP) federated=$(FED_ALGORITHMS) && $(FED_SWEEP) experiment=$(FED_VARIANTS); \
		status=$$?; $(MAKE) federated-report FED_REPORT_OUT=experiments/federated && exit $$status

# the committed report, experiments/federated, is written by make federated
FED_REPORT_OUT ?= logs/reports/federated
federated-report: $(STAMP) ## the federated report → FED_REPORT_OUT from the MLflow store
	$(BIN)/python -m m3oe_lightning.reports.federated --study federated --out $(FED_REPORT_OUT) --command "make federated"

# A study's finished runs are archived beside its committed report (python -m m3oe_lightning.tracking.archive: one
# .json.gz a run with its tags, params, times and metric histories), imported into the local store before the study
# or its report runs and exported after: a study resumed on a fresh machine skips what ran, its report covers all.
ARCHIVE = $(BIN)/python -m m3oe_lightning.tracking.archive
archive_import = $(if $(wildcard $(1)),$(ARCHIVE) import --dir $(1))
archive_export = $(ARCHIVE) export --study $(1) --dir $(2) --experiment $(3)

# PAGE's Synthetic setting (issue #13, item 5a): FedAvg, FedProx, Ditto, PAGE with the released and the affine
# action map, and the random-action control (PAGE that never leaves warm-up: random lr/epochs every round, no
# agent learning) × PAGE_SYN_SEEDS, Hydra multiruns, resumable (finished runs are skipped). federated.label names
# each arm in reports. About 6 minutes per 300-round run here (cohort fits; Ditto twice that).
PAGE_SYN_SEEDS ?= 1,2,3
PAGE_SYN_ROUNDS ?= 300
PAGE_SYN_SWEEP = $(BIN)/python -m m3oe_lightning.federate -m experiment=federated/page_synthetic seed=$(PAGE_SYN_SEEDS) \
	federated.rounds=$(PAGE_SYN_ROUNDS) skip_finished=true +logger.tags.study=page_synthetic \
	hydra.callbacks.mlflow_sweep.name=page_synthetic $(LAUNCHER) $(ARGS)
page-synthetic: $(STAMP) ## PAGE's Synthetic study: 6 arms × PAGE_SYN_SEEDS, PAGE_SYN_ROUNDS rounds (resumable)
	$(call archive_import,$(PAGE_SYN_ARCHIVE))
	$(PAGE_SYN_SWEEP) federated=fedavg,fedprox,ditto
	$(PAGE_SYN_SWEEP) federated=page federated.action_map=released +federated.label=page-released
	$(PAGE_SYN_SWEEP) federated=page federated.action_map=affine +federated.label=page-affine
	$(PAGE_SYN_SWEEP) federated=page federated.action_map=released federated.warmup=$(PAGE_SYN_ROUNDS) \
		+federated.label=page-random; \
		status=$$?; $(MAKE) page-synthetic-report PAGE_SYN_OUT=experiments/federated/page_synthetic && exit $$status

# the committed report, experiments/federated/page_synthetic, is written by make page-synthetic
PAGE_SYN_OUT ?= logs/reports/page_synthetic
PAGE_SYN_ARCHIVE = experiments/federated/page_synthetic/runs
page-synthetic-report: $(STAMP) ## the Synthetic study's report → PAGE_SYN_OUT from the MLflow store
	$(call archive_import,$(PAGE_SYN_ARCHIVE))
	$(call archive_export,page_synthetic,$(PAGE_SYN_ARCHIVE),m3oe-federated)
	$(BIN)/python -m m3oe_lightning.reports.page_synthetic --out $(PAGE_SYN_OUT) --command "make page-synthetic"

# PAGE on recommendation (issue #13, item 5b), one study per setting of FEDREC_SETTINGS: `region` (a client per
# zip region, one held out) and `dirichlet` (FEDREC_CLIENTS clients, α 0.5, half of them sampled each round).
# Arms: centralized, FedAvg, FedProx, Ditto, federated M3oE, PAGE with the released and the affine action map and
# the random-action control, each with row-sparse embedding aggregation off and on, × FEDREC_SEEDS, FEDREC_ROUNDS
# rounds; PAGE warms up for 10% of the rounds and decays ε over half of them, choosing lr in [1e-3, 1e-2] (the
# baselines' 1e-2 on top) and 1–2 local epochs. MovieLens-100K by default: on 2 CPU cores a 100-round
# MovieLens-1M run takes over an hour (FEDREC_DATA=movielens1m where the budget allows). Resumable.
FEDREC_DATA ?= movielens100k
FEDREC_SETTINGS ?= region dirichlet
FEDREC_SEEDS ?= 1,2,3
FEDREC_ROUNDS ?= 100
FEDREC_CLIENTS ?= 20
FEDREC_SPARSE ?= false,true
# false: rerun finished runs too (the report takes the newest run of each arm and seed), e.g. runs made before
# the server logged global_val/auc_mean, which the report's validation table needs
FEDREC_SKIP ?= true
FEDREC_region = federated.partition=region federated.heldout_clients=1
FEDREC_dirichlet = federated.partition=dirichlet federated.num_clients=$(FEDREC_CLIENTS) federated.alpha=0.5 \
	federated.fraction_train=0.5
FEDREC_SWEEP = $(BIN)/python -m m3oe_lightning.federate -m data=$(FEDREC_DATA) model=m3oe seed=$(FEDREC_SEEDS) \
	$(FEDREC_$(FEDREC_SETTING)) federated.rounds=$(FEDREC_ROUNDS) skip_finished=$(FEDREC_SKIP) \
	+logger.tags.study=federated_rec_$(FEDREC_SETTING) \
	hydra.callbacks.mlflow_sweep.name=federated_rec_$(FEDREC_SETTING) $(LAUNCHER) $(ARGS)
FEDREC_WARMUP = $(shell expr $(FEDREC_ROUNDS) / 10)
FEDREC_PAGE = federated=page federated.lr_min=1e-3 federated.lr_max=1e-2 federated.epochs_max=2 \
	federated.agent.epsilon_decay=$(shell expr $(FEDREC_ROUNDS) / 2) federated.sparse_embeddings=$(FEDREC_SPARSE)
federated-rec: $(STAMP) ## PAGE on recommendation: FEDREC_SETTINGS × 8 arms × sparse off/on × FEDREC_SEEDS, reports
	status=0; for setting in $(FEDREC_SETTINGS); do \
		$(MAKE) federated-rec-setting FEDREC_SETTING=$$setting || status=$$?; done; exit $$status
federated-rec-setting: $(STAMP)
	$(FEDREC_IMPORT)
	$(FEDREC_SWEEP) experiment=federated/centralized
	$(FEDREC_SWEEP) federated=fedavg,fedprox,ditto federated.sparse_embeddings=$(FEDREC_SPARSE)
	$(FEDREC_SWEEP) experiment=federated/fedavg_m3oe federated.sparse_embeddings=$(FEDREC_SPARSE)
	$(FEDREC_SWEEP) $(FEDREC_PAGE) federated.warmup=$(FEDREC_WARMUP) federated.action_map=released \
		+federated.label=page-released
	$(FEDREC_SWEEP) $(FEDREC_PAGE) federated.warmup=$(FEDREC_WARMUP) federated.action_map=affine \
		+federated.label=page-affine
	$(FEDREC_SWEEP) $(FEDREC_PAGE) federated.warmup=$(FEDREC_ROUNDS) federated.action_map=released \
		+federated.label=page-random; \
		status=$$?; $(MAKE) federated-rec-report FEDREC_OUT=experiments/federated/rec_$(FEDREC_SETTING) && exit $$status

# the committed reports, experiments/federated/rec_<setting>, are written by make federated-rec; the runs are
# archived in FEDREC_ARCHIVE
FEDREC_SETTING ?= region
FEDREC_OUT ?= logs/reports/federated_rec_$(FEDREC_SETTING)
FEDREC_ARCHIVE ?= experiments/federated/rec_$(FEDREC_SETTING)/runs
FEDREC_IMPORT = $(call archive_import,$(FEDREC_ARCHIVE))
federated-rec-report: $(STAMP) ## the recommendation study's report for FEDREC_SETTING → FEDREC_OUT
	$(FEDREC_IMPORT)
	$(call archive_export,federated_rec_$(FEDREC_SETTING),$(FEDREC_ARCHIVE),m3oe-federated)
	$(BIN)/python -m m3oe_lightning.reports.federated --study federated_rec_$(FEDREC_SETTING) --out $(FEDREC_OUT) \
		--command "make federated-rec FEDREC_SETTINGS=$(FEDREC_SETTING)"

# issue #17: bf16 end to end (trainer.precision=bf16-true) against fp32, Table-2 M3oE × BF16_SEEDS, both precisions
BF16_SEEDS ?= 2022,2023,2024,2025,2026
BF16_OUT ?= experiments/bench/bf16-accuracy
BF16_ARCHIVE = experiments/bench/bf16-accuracy/runs
bf16-accuracy: $(STAMP) ## bf16 end to end vs fp32 test AUC: M3oE × BF16_SEEDS at both precisions (resumable), report → BF16_OUT
	$(call archive_import,$(BF16_ARCHIVE))
	$(BIN)/python -m m3oe_lightning.train -m experiment=paper/m3oe seed=$(BF16_SEEDS) trainer.precision=32-true,bf16-true \
		$(LAUNCHER) trainer.enable_progress_bar=false trainer.enable_model_summary=false skip_finished=true \
		logger.tags.study=bf16-accuracy hydra.callbacks.mlflow_sweep.name=bf16-accuracy $(ARGS); status=$$?; \
	$(MAKE) bf16-accuracy-report && exit $$status
bf16-accuracy-report: $(STAMP) ## the bf16-vs-fp32 report (BF16_OUT) from MLflow
	$(call archive_import,$(BF16_ARCHIVE))
	$(call archive_export,bf16-accuracy,$(BF16_ARCHIVE),m3oe-lightning)
	$(BIN)/python -m m3oe_lightning.reports.precision --out $(BF16_OUT)

# every preset of m3oe_lightning/bench/throughput.py (M3oE paper/released, MMoE, STAR, bf16 autocast) at both batch sizes
BENCH_ARGS ?= --batch-sizes 4096 40960
# issue #13's setting: 100 clients in one process (Dirichlet partition of ML-1M)
FED_BENCH_100 ?= data=movielens1m federated=fedavg federated.partition=dirichlet federated.num_clients=100
# PAGE's Synthetic setting (100 clients × 20 local epochs): the cohort fits against one Lightning fit per client
FED_BENCH_SYNTHETIC ?= experiment=federated/page_synthetic federated=fedavg
# a local checkout of the released M3oE code (Applied-Machine-Learning-Lab/M3oE; never downloaded): the side-by-side
# row of experiments/bench/released-code.md; empty: that report shows the last measurement and its date
RELEASED_CODE ?=
bench: $(STAMP) ## throughput/MFU/RSS, a federated round's time split, scoring speed, deployment latency, DP cost, start-up, the released code side by side → experiments/bench/
	$(BIN)/python -m m3oe_lightning.bench.throughput $(BENCH_ARGS) $(ARGS)
	$(BIN)/python -m m3oe_lightning.bench.federated
	$(BIN)/python -m m3oe_lightning.bench.federated --name federated-100 $(FED_BENCH_100)
	$(BIN)/python -m m3oe_lightning.bench.federated --name federated-100-evaluate-every-5 --rounds 5 \
		$(FED_BENCH_100) federated.evaluate_every=5
	$(BIN)/python -m m3oe_lightning.bench.federated --name federated-synthetic-cohort $(FED_BENCH_SYNTHETIC)
	$(BIN)/python -m m3oe_lightning.bench.federated --name federated-synthetic-per-client --rounds 1 \
		$(FED_BENCH_SYNTHETIC) federated.cohort=false
	$(BIN)/python -m m3oe_lightning.bench.serving
	$(BIN)/python -m m3oe_lightning.bench.deployment
	$(BIN)/python -m m3oe_lightning.bench.privacy
	$(BIN)/python -m m3oe_lightning.bench.startup
	$(BIN)/python -m m3oe_lightning.bench.released_code $(if $(RELEASED_CODE),--released-code $(RELEASED_CODE))

bench-reproduce: $(STAMP) ## wall time of make reproduce-quick and the projected full make reproduce → experiments/bench/reproduce.md
	$(BIN)/python -m m3oe_lightning.bench.reproduce $(ARGS)

bench-scaling: $(STAMP) ## memmap data path at 1M/10M/50M synthetic rows → experiments/bench/scaling.{md,json,png}
	$(BIN)/python -m m3oe_lightning.bench.scaling $(ARGS)

# Use a trained model (README, "Use a trained model"): RUN = a run id, runs:/<id>/model, or a checkpoint path
RUN ?=
INPUT ?=
OUTPUT ?=
PORT ?= 5001
predict: $(STAMP) ## score a file of raw rows: make predict RUN=<run id> INPUT=rows.csv OUTPUT=scores.csv [ARGS=--evaluate]
	$(BIN)/python -m m3oe_lightning.predict run=$(RUN) input=$(INPUT) output=$(OUTPUT) $(ARGS)

export: $(STAMP) ## the network as ONNX (checked with onnxruntime): make export RUN=<run id> → logs/exports/<run>.onnx
	$(BIN)/python -m m3oe_lightning.export run=$(RUN) $(ARGS)

serve: $(STAMP) ## serve a run's MLflow model over HTTP on 127.0.0.1:PORT (POST /invocations): make serve RUN=<run id>
	PATH="$(abspath $(BIN)):$$PATH" MLFLOW_TRACKING_URI=sqlite:///logs/mlflow.db $(BIN)/mlflow models serve \
		-m runs:/$(RUN)/model --env-manager local -h 127.0.0.1 -p $(PORT)

ui: $(STAMP) ## MLflow UI for logs/mlflow.db on http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///logs/mlflow.db --default-artifact-root logs/mlflow/artifacts --host 127.0.0.1 --port 5000

APPLY ?=
clean-checkpoints: $(STAMP) ## keep the best checkpoint of FINISHED runs, list the rest (APPLY=1 deletes it)
	$(BIN)/python -m m3oe_lightning.tracking.clean --checkpoint-dir logs/checkpoints $(if $(APPLY),--apply)

clean-logs: ## delete logs/ (MLflow store, checkpoints, Hydra outputs)
	rm -rf logs outputs multirun

clean: clean-logs ## delete the venv and caches too
	rm -rf $(VENV) .cache .pytest_cache
