# One entry point for every task: make deps|gen|build|lint|test|demo|bench|experiment.
# CI runs exactly `make test` (see .ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

# Debian's torch lives under /usr/bin/python3; the python3 first on PATH may lack it.
PYTHON ?= /usr/bin/python3
NODE_TEST_FLAGS ?= --test-reporter=spec
TS_GEN := orchestrator/src/gen
PY_GEN := worker-runtime/clipfleet_worker/gen
PROTOS := $(wildcard proto/clipfleet/v1/*.proto)

.PHONY: deps gen build lint test test-unit test-py test-e2e test-deploy demo bench bench-quick gpu-check experiment experiment-veclip seg-diagnostics clean

## deps: install missing Debian packages, then node modules (idempotent)
deps: node_modules/.clipfleet-stamp
	@bash deploy/install-deps.sh

node_modules/.clipfleet-stamp: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

## gen: TypeScript and Python code from proto/ (never edited by hand)
gen: $(TS_GEN)/.stamp $(PY_GEN)/.stamp

$(TS_GEN)/.stamp: $(PROTOS) node_modules/.clipfleet-stamp
	@bash deploy/install-deps.sh >/dev/null
	rm -rf $(TS_GEN) && mkdir -p $(TS_GEN)
	protoc -I proto --plugin=protoc-gen-ts_proto=node_modules/.bin/protoc-gen-ts_proto \
	  --ts_proto_out=$(TS_GEN) \
	  --ts_proto_opt=outputServices=grpc-js,env=node,esModuleInterop=true,oneof=unions-value,forceLong=number,importSuffix=.js,useOptionals=none \
	  $(PROTOS)
	@touch $@

# Python stubs import each other as `clipfleet.v1.x`; rewrite that to the
# package they live in (what protoletariat does) so no sys.path tricks are needed.
$(PY_GEN)/.stamp: $(PROTOS)
	@bash deploy/install-deps.sh >/dev/null
	rm -rf $(PY_GEN) && mkdir -p $(PY_GEN)
	protoc -I proto --python_out=$(PY_GEN) --pyi_out=$(PY_GEN) --grpc_python_out=$(PY_GEN) \
	  --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin $(PROTOS)
	sed -i 's/^from clipfleet\.v1 import/from clipfleet_worker.gen.clipfleet.v1 import/' $(PY_GEN)/clipfleet/v1/*.py
	touch $(PY_GEN)/__init__.py $(PY_GEN)/clipfleet/__init__.py $(PY_GEN)/clipfleet/v1/__init__.py
	@touch $@

## build: compile the orchestrator, CLI, tests and benchmarks; the dashboard's assets with uPlot (no CDN)
UI_ASSETS := dist/orchestrator/src/ui/assets
build: deps gen
	node_modules/.bin/tsc -p tsconfig.json
	rm -rf $(UI_ASSETS) && mkdir -p $(UI_ASSETS)
	cp orchestrator/src/ui/assets/* node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css $(UI_ASSETS)/

## lint: typescript-eslint on hand-written code, the module dependency rule, Python byte-compile
lint: build
	node_modules/.bin/eslint --max-warnings 0 orchestrator tests bench
	$(PYTHON) -m compileall -q worker-runtime/clipfleet_worker

## test: everything CI runs
test: build lint test-unit test-py test-e2e bench-quick

test-unit: build
	node --test $(NODE_TEST_FLAGS) $$(find dist/orchestrator/test -name '*.test.js' | sort)

test-py: build
	cd worker-runtime && $(PYTHON) -m pytest -q -p no:cacheprovider tests

test-e2e: build
	node --test --test-concurrency=1 $(NODE_TEST_FLAGS) $$(find dist/tests -name '*.test.js' | sort)

## demo: a real 2-worker CLIP training job on synthetic data
demo: build
	bin/clipfleet run examples/tiny-pretrain.yaml

## gpu-check: ViT-B/16 bf16 pretrain, kill -9 and resume, 2-rank NCCL, throughput vs torchvision, on CUDA
## (docs/benchmarks.md, "GPU check"); without CUDA it says so and exits 0. No build step: a GPU machine
## may have the build carried to it (PYTHON=... for the python with torch).
GPU_CHECK_ARGS ?=
gpu-check:
	bash bench/gpu-check.sh $(GPU_CHECK_ARGS)

## experiment: the seeds' caption-quality experiment in miniature (about 15 minutes on 2 cores)
EXPERIMENT_METRICS := retrieval/i2t_R@1,retrieval/t2i_R@1,zeroshot/top1,seg/mIoU,seg/pixel_acc,depth/rmse,depth/abs_rel,depth/delta1
experiment: build
	bin/clipfleet run examples/caption-quality.yaml --report results/caption-quality \
	  --compare variant --metrics $(EXPERIMENT_METRICS)
	sed 's/(comparison.png)/(caption-quality.png)/' results/caption-quality/comparison.md > results/caption-quality.md
	cp results/caption-quality/comparison.json results/caption-quality.json
	cp results/caption-quality/comparison.png results/caption-quality.png

## experiment-veclip: VeCLIP's pipeline in miniature: captioner, recaption, pretraining on its captions, dense fine-tunes (under 45 minutes on 2 cores)
VECLIP_METRICS := retrieval/i2t_R@1,retrieval/t2i_R@1,zeroshot/top1,seg/mIoU,seg/pixel_acc,depth/rmse,depth/abs_rel,depth/delta1
experiment-veclip: build
	bin/clipfleet run examples/veclip-pipeline.yaml --report results/veclip-pipeline \
	  --compare variant --metrics $(VECLIP_METRICS)
	sed 's/(comparison.png)/(veclip-pipeline.png)/' results/veclip-pipeline/comparison.md > results/veclip-pipeline.md
	cp results/veclip-pipeline/comparison.json results/veclip-pipeline.json
	cp results/veclip-pipeline/comparison.png results/veclip-pipeline.png
	printf '\n## How much of the captioner'"'"'s captions is about its image\n\n' >> results/veclip-pipeline.md
	$(PYTHON) examples/recap_word_check.py examples/data/veclip-recap >> results/veclip-pipeline.md

## seg-diagnostics: why random init won segmentation in the first experiment run (about 20 minutes on 2 cores)
seg-diagnostics: build
	bin/clipfleet run examples/seg-diagnostics.yaml --report results/seg-diagnostics \
	  --compare variant --metrics seg/mIoU,seg/mAcc
	sed 's/(comparison.png)/(seg-diagnostics.png)/' results/seg-diagnostics/comparison.md > results/seg-diagnostics.md
	cp results/seg-diagnostics/comparison.json results/seg-diagnostics.json
	cp results/seg-diagnostics/comparison.png results/seg-diagnostics.png

## bench: every benchmark (docs/benchmarks.md); writes bench/results/latest.json and the docs table
bench: build
	node dist/bench/run.js

## bench-quick: every benchmark in miniature (under 4 minutes, writes bench/results/quick.json), so they cannot rot
bench-quick: build
	node dist/bench/run.js --quick

clean:
	rm -rf dist $(TS_GEN) $(PY_GEN) .clipfleet
