# Every target runs from the repo's own files: `make venv` builds .venv from pinned requirements.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo demo-reject test lint typecheck unit clean image image-local bench-validate template-check checkov bench-cold-start

venv: $(STAMP)

$(STAMP): requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements-dev.txt -c constraints.txt
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

test: lint typecheck template-check checkov
	$(BIN)/pytest -q

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

clean:
	rm -rf $(VENV) $(SAM_VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache out .aws-sam
