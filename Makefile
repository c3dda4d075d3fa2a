# Two commands do everything on a fresh machine:
#   make demo   - create .venv, run the whole pipeline on the embedded sample data
#   make test   - create .venv, run the test suite
PYTHON ?= python3.11
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
	$(PY) tile_from_info.py --out $(DEMO)/datasets --info $(DEMO)/sample.csv --tile 128 \
		--n_train 48 --n_valid 12 --crap_func new_crap_AG_SP --n_frames 1 --lr_type s --seed $(SEED)
	$(PY) tile_from_info.py --out $(DEMO)/datasets --info $(DEMO)/sample.csv --tile 128 --only fluo_live \
		--n_train 24 --n_valid 6 --crap_func new_crap_AG_SP --n_frames 5 --lr_type t --seed $(SEED)
	$(PY) train.py --data_path $(DEMO)/datasets --datasetname s_1_sample_new_crap_AG_SP \
		--model_dir $(DEMO)/models --arch resnet18 --size 128 --tile_sz 128 --bs 8 --cycles 6 --lr 1e-3 \
		--save_name demo --seed $(SEED)
	$(PY) -m utils.testset $(DEMO)/sources $(DEMO)/test --split valid --crap_func new_crap_AG_SP --seed $(SEED)
	$(PY) image_gen.py $(DEMO)/test/lr $(DEMO)/restored --models s_1_demo_e6 --model_dir $(DEMO)/models --baselines
	$(PY) metric_gen.py --pred_dir $(DEMO)/restored --gt_dir $(DEMO)/test/gt --lr_dir $(DEMO)/test/lr \
		--out $(DEMO)/stats

bench: venv
	for f in bench/bench_*.py; do $(PY) $$f || exit 1; done
