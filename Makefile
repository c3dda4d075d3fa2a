# Two commands do everything on a fresh machine:
#   make demo   - create .venv, run the whole pipeline on the embedded sample data
#   make test   - create .venv, run the test suite
# The first of python3.11, python3 that is Python >= 3.11 (else python3.11, whose absence the venv step reports).
PYTHON ?= $(shell for p in python3.11 python3; do $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	>/dev/null 2>&1 && { echo $$p; exit; }; done; echo python3.11)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements.sha256
REQ_SHA := $(shell sha256sum requirements.txt | cut -d' ' -f1)
DEMO := demo_out
SEED ?= 0

.PHONY: venv demo test bench clean-demo

# Re-use .venv while requirements.txt is unchanged; rebuild it otherwise.
venv:
	@if [ "$$(cat $(STAMP) 2>/dev/null)" != "$(REQ_SHA)" ]; then \
		echo "creating $(VENV) from requirements.txt"; \
		rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) && \
		$(PY) -m pip install -q --upgrade pip && \
		$(PY) -m pip install -q -r requirements.txt && \
		echo "$(REQ_SHA)" > $(STAMP); \
	fi

test: venv
	$(PY) -m pytest -q tests

demo: venv
	rm -rf $(DEMO)
	$(PY) -m utils.sample_data $(DEMO)/sources --seed $(SEED)
	$(PY) gen_sample_info.py --out $(DEMO)/sample.csv $(DEMO)/sources/fixed $(DEMO)/sources/live
	# The demo trains minutes, not hours: --residual (an untrained model equals bilinear) and one learning rate
	# for every layer group (--lr_start = --lr), our short-training settings (README, "What to expect").
	# EM: single-frame model with the paper's EM crappifier
	$(PY) tile_from_info.py --out $(DEMO)/datasets --info $(DEMO)/sample.csv --tile 128 --only em \
		--n_train 64 --n_valid 16 --crap_func em_AG_D_sameas_preprint --n_frames 1 --lr_type s --seed $(SEED)
	$(PY) train.py --data_path $(DEMO)/datasets --datasetname s_1_sample_em_AG_D_sameas_preprint \
		--model_dir $(DEMO)/models --arch resnet18 --size 128 --tile_sz 128 --bs 8 --cycles 10 --lr 1e-3 \
		--lr_start 1e-3 --residual --save_name em --seed $(SEED)
	# Live fluorescence: 5-frame (t-2..t+2) model with the paper's fluorescence crappifier
	$(PY) tile_from_info.py --out $(DEMO)/datasets --info $(DEMO)/sample.csv --tile 128 --only fluo_live \
		--n_train 48 --n_valid 12 --crap_func new_crap_AG_SP --n_frames 5 --lr_type t --seed $(SEED)
	$(PY) train.py --data_path $(DEMO)/datasets --datasetname t_5_sample_new_crap_AG_SP \
		--model_dir $(DEMO)/models --arch resnet18 --size 128 --tile_sz 128 --bs 8 --cycles 10 --lr 1e-3 \
		--lr_start 1e-3 --residual --save_name mito --lr_type t --n_frames 5 --seed $(SEED)
	# Held-out valid images, crappified like the training tiles, restored and measured against bilinear
	$(PY) -m utils.testset $(DEMO)/sources/fixed $(DEMO)/test_em --split valid --crap_func em_AG_D_sameas_preprint --seed $(SEED)
	$(PY) -m utils.testset $(DEMO)/sources/live $(DEMO)/test_mito --split valid --crap_func new_crap_AG_SP --seed $(SEED)
	$(PY) image_gen.py $(DEMO)/test_em/lr $(DEMO)/restored_em --models s_1_em_e10 --model_dir $(DEMO)/models --baselines
	$(PY) image_gen.py $(DEMO)/test_mito/lr $(DEMO)/restored_mito --models t_5_mito_e10 --model_dir $(DEMO)/models --baselines
	$(PY) metric_gen.py --pred_dir $(DEMO)/restored_em --gt_dir $(DEMO)/test_em/gt --lr_dir $(DEMO)/test_em/lr \
		--out $(DEMO)/stats --name em
	$(PY) metric_gen.py --pred_dir $(DEMO)/restored_mito --gt_dir $(DEMO)/test_mito/gt --lr_dir $(DEMO)/test_mito/lr \
		--out $(DEMO)/stats --name mito

bench: venv
	for f in bench/bench_*.py; do $(PY) $$f || exit 1; done
