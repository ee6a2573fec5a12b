# Every target runs from the repo's own files: `make venv` builds .venv from pinned requirements.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo demo-reject test lint typecheck unit clean image image-local bench-validate template-check browser \
	checkov bench-cold-start kohya-venv kohya-check kohya-tests py312-tests fresh-install-check gpu-bench-bundle

venv: $(STAMP)

# TORCH_INDEX_URL: an extra index to take torch from, e.g. PyTorch's CPU-only wheel index (a few hundred MB
# instead of the CUDA build the public registry serves for Linux x86_64). Unset, only the registry is used.
TORCH_INDEX_URL ?=
TORCH_INDEX := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))

$(STAMP): requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements-dev.txt -c constraints.txt $(TORCH_INDEX)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The whole pipeline on the embedded AWS: upload -> settle -> validate -> train (smoke) -> unpack -> email.
demo: venv
	$(BIN)/python -m lora_pipeline_cli.demo bluebot

# The broken example: every mistake is caught before a GPU is rented, and the rejection email lists the fixes.
demo-reject: venv
	$(BIN)/python -m lora_pipeline_cli.demo broken

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

test: lint typecheck template-check checkov browser kohya-venv
	$(BIN)/pytest -q
	$(MAKE) py312-tests kohya-tests

# The run report's screenshot test renders report.html in headless chromium (Debian's package), installed here
# when it is missing (root, or passwordless sudo).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

# The SAM CLI gets its own venv (its pins clash with the main venv's pydantic). `sam validate --lint` runs
# offline and needs no credentials; cfn-lint from the main venv checks the same template with our pins.
SAM_VENV := .venv-sam
$(SAM_VENV)/.installed: requirements-sam.txt
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet -r requirements-sam.txt
	touch $@

template-check: venv $(SAM_VENV)/.installed
	SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1 $(SAM_VENV)/bin/sam validate --lint --template-file template.yaml
	$(BIN)/cfn-lint template.yaml

# checkov gets its own venv too (its pins clash with both). Every check passes, or template.yaml skips it
# with a written reason (`checkov: skip:` metadata). --skip-download: no guideline links fetched, offline.
CHECKOV_VENV := .venv-checkov
$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet -r requirements-checkov.txt
	touch $@

checkov: $(CHECKOV_VENV)/.installed
	$(CHECKOV_VENV)/bin/checkov --file template.yaml --framework cloudformation --quiet --compact --skip-download

# Each handler's import time from `sam build` artefacts on python3.12 (fails over 0.35 s of CPU).
bench-cold-start: venv $(SAM_VENV)/.installed
	$(BIN)/python benchmarks/cold_start.py

# The training image: built by the stack's CodeBuild project and pushed to its ECR repository (about 20 minutes).
image: venv
	@test -n "$(STACK)" || { echo "usage: make image STACK=<deployed stack name> [TAG=<image tag>]"; exit 2; }
	$(BIN)/python -m lora_image_build --stack $(STACK) $(if $(TAG),--tag $(TAG))

# The same image with the Docker engine on this machine (tag sdxl-lora-trainer:dev unless TAG is given).
image-local: venv
	$(BIN)/python -m lora_image_build --local $(if $(TAG),--tag $(TAG))

# Times the dataset check on 1,000 generated images against decoding each one with Pillow.
bench-validate: venv
	$(BIN)/python benchmarks/validate_images.py

# The engine: sd-scripts at the tag and commit the image runs, both read from the image's pin list.
IMAGE_REQUIREMENTS := container/image-requirements.txt
SD_SCRIPTS_TAG := $(word 3,$(shell grep '^\# sd-scripts: ' $(IMAGE_REQUIREMENTS)))
SD_SCRIPTS_COMMIT := $(word 4,$(shell grep '^\# sd-scripts: ' $(IMAGE_REQUIREMENTS)))
SD_SCRIPTS := build/sd-scripts
# A `git archive` of that commit (CI: ../shared/vendor/sd-scripts-v0.10.1.tar.gz); unset, the tag is cloned.
SD_SCRIPTS_ARCHIVE ?=

$(SD_SCRIPTS)/.fetched: $(IMAGE_REQUIREMENTS)
	rm -rf $(SD_SCRIPTS).new && mkdir -p $(SD_SCRIPTS).new
ifneq ($(SD_SCRIPTS_ARCHIVE),)
	test "$$(gzip -dc $(SD_SCRIPTS_ARCHIVE) | git get-tar-commit-id)" = "$(SD_SCRIPTS_COMMIT)" \
		|| { echo "$(SD_SCRIPTS_ARCHIVE) is not sd-scripts $(SD_SCRIPTS_TAG) ($(SD_SCRIPTS_COMMIT))"; exit 1; }
	tar xzf $(SD_SCRIPTS_ARCHIVE) -C $(SD_SCRIPTS).new --strip-components=1
else
	git clone --quiet --depth 1 --branch $(SD_SCRIPTS_TAG) https://github.com/kohya-ss/sd-scripts.git $(SD_SCRIPTS).new
	test "$$(git -C $(SD_SCRIPTS).new rev-parse HEAD)" = "$(SD_SCRIPTS_COMMIT)" \
		|| { echo "sd-scripts $(SD_SCRIPTS_TAG) is no longer commit $(SD_SCRIPTS_COMMIT)"; exit 1; }
endif
	rm -rf $(SD_SCRIPTS) && mv $(SD_SCRIPTS).new $(SD_SCRIPTS)
	touch $@

# The reference environment: the image's pins on Python 3.11 (torch 2.6.0's CUDA build runs on the CPU), with
# sd-scripts installed as the image installs it, plus pytest for the tests that run on the image's versions.
KOHYA_VENV := .venv-kohya
$(KOHYA_VENV)/.installed: $(IMAGE_REQUIREMENTS) $(SD_SCRIPTS)/.fetched constraints.txt
	rm -rf $(KOHYA_VENV)
	$(PYTHON) -m venv $(KOHYA_VENV)
	$(KOHYA_VENV)/bin/pip install --quiet -r $(IMAGE_REQUIREMENTS)
	$(KOHYA_VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e $(SD_SCRIPTS)
	$(KOHYA_VENV)/bin/pip install --quiet pytest -c constraints.txt
	$(KOHYA_VENV)/bin/pip check
	touch $@

kohya-venv: $(KOHYA_VENV)/.installed

# Real sd-scripts trains the full-size SDXL architecture (random weights) on the CPU through container/train,
# is stopped by SIGTERM after its first epoch state and resumes; the LoRA goes through the product's unpack.
kohya-check: venv kohya-venv
	PYTHONPATH=.:container $(BIN)/python -m kohya_check

# Everything benchmarks/gpu_train_step.py needs on a bare CUDA machine with Python 3.11: the committed tree,
# sd-scripts and every wheel of the image's pin list, in out/gpu-bench.tar (about 4 GB).
gpu-bench-bundle: kohya-venv
	rm -rf build/gpu-bench && mkdir -p build/gpu-bench/gpu-bench/build out
	git archive HEAD | tar x -C build/gpu-bench/gpu-bench
	cp -r $(SD_SCRIPTS) build/gpu-bench/gpu-bench/build/sd-scripts
	$(KOHYA_VENV)/bin/pip download --quiet -r $(IMAGE_REQUIREMENTS) -d build/gpu-bench/gpu-bench/wheels
	tar cf out/gpu-bench.tar -C build/gpu-bench gpu-bench

# The smoke trainer and the Diffusers interop tests on the image's versions.
kohya-tests: venv kohya-venv
	PYTHONPATH=.:container:layers/common:cli:embedded $(KOHYA_VENV)/bin/pytest -q -p no:cacheprovider --noconftest \
		tests/integration/test_smoke_lora_interop.py tests/unit/test_safetensors_lora_interop.py \
		tests/integration/test_container_entrypoint.py tests/unit/test_tokenizer_cache.py

# The Lambda layer's code and tests on the Lambda runtime's Python (3.12).
PY312_VENV := .venv-py312
PYTHON312 ?= $(shell PYENV_VERSION=3.11.7:3.12.1 pyenv which python3.12 2>/dev/null || command -v python3.12)
$(PY312_VENV)/.installed: layers/common/requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON312) -m venv $(PY312_VENV)
	$(PY312_VENV)/bin/pip install --quiet -r layers/common/requirements.txt pytest moto[all,server] \
		aws-sam-translator cfn-lint pillow numpy safetensors psutil toml tomli-w rich -c constraints.txt
	$(PY312_VENV)/bin/pip install --quiet --no-deps -e .
	# setuptools leaves its egg-info in the checkout; on sys.path under pytest it would shadow .venv's metadata
	rm -rf sdxl_lora_pipeline.egg-info
	touch $@

# test_packaging checks the development environment's installs (the `local` extra), not the runtime's.
py312-tests: $(PY312_VENV)/.installed
	PYTHONPATH=layers/common:cli:embedded:container:. $(PY312_VENV)/bin/pytest -q -p no:cacheprovider tests/unit \
		--ignore=tests/unit/test_safetensors_lora_interop.py --ignore=tests/unit/test_container_workspace.py \
		--ignore=tests/unit/test_packaging.py

# Every pin resolves from the public registry alone: pip's config files, environment and find-links ignored.
FRESH_PIP := -m pip install --isolated --dry-run --ignore-installed --quiet
fresh-install-check: venv kohya-venv $(SAM_VENV)/.installed $(PY312_VENV)/.installed
	$(BIN)/python $(FRESH_PIP) -r requirements-dev.txt -c constraints.txt
	$(BIN)/python $(FRESH_PIP) '.[local]' -c constraints.txt
	$(BIN)/python $(FRESH_PIP) -r requirements-checkov.txt
	$(SAM_VENV)/bin/python $(FRESH_PIP) -r requirements-sam.txt
	$(PY312_VENV)/bin/python $(FRESH_PIP) -r layers/common/requirements.txt
	$(KOHYA_VENV)/bin/python $(FRESH_PIP) -r $(IMAGE_REQUIREMENTS)

clean:
	rm -rf $(VENV) $(SAM_VENV) $(CHECKOV_VENV) $(KOHYA_VENV) $(PY312_VENV) build .pytest_cache .mypy_cache \
		.ruff_cache out .aws-sam
