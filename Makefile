# make demo  — bootstrap .venv, train a DDPM on built-in digits, reload it, write a sample grid + loss curve.
# make test  — the full test suite (CI runs exactly this).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    ?= runs/ddpm-digits
DEMO_STEPS ?= 1500
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
# One process on the CPU; accelerate's flags spelled out so no config file is needed.
LAUNCH := $(BIN)/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(LAUNCH) training/train_ddpm.py --dataset_name digits --output_dir $(RUN) \
		--max_train_steps $(DEMO_STEPS) --train_batch_size 64 --learning_rate 1e-3 --lr_scheduler cosine \
		--lr_warmup_steps 100 --ema_power 0.75 --checkpointing_steps 1000 --checkpoints_total_limit 1 \
		--validation_steps 500 --num_validation_images 36 --mixed_precision bf16
	$(BIN)/python -m training.sample --pipeline $(RUN) --num_images 64 --num_inference_steps 50 \
		--output $(RUN)/samples.png
	@echo "pipeline:    $(RUN)/ (model_index.json, unet/, scheduler/, README.md)"
	@echo "samples:     $(RUN)/samples.png (64 digits from the reloaded pipeline)"
	@echo "loss curve:  $(RUN)/loss_curve.png; validation grids: $(RUN)/samples/; TensorBoard: $(RUN)/logs/"

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -rs --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check custom_pipelines training tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ddpm.py

clean:
	rm -rf runs .pytest_cache
