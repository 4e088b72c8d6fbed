# The two commands of the quick start: `make demo` (main job on the embedded dataset) and
# `make test`. Both create .venv on first use (tools/setup_env.sh; a second run does nothing).
PY := .venv/bin/python
STAMP := .venv/.ssprl_setup_done

.PHONY: setup demo test benchmark gpu-check clean

setup: $(STAMP)

$(STAMP): tools/setup_env.sh requirements.txt setup.py
	bash tools/setup_env.sh

# the main job on the embedded dataset (generated on first use), CPU schedules: pre-train SS-PRL,
# export the trunk, fine-tune Mask R-CNN from it and from random init, evaluate both
demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m pytest -q tests

benchmark: $(STAMP)
	$(PY) tools/benchmark.py

# one command that checks a GPU machine (about 8 minutes): CUDA tests, step throughput, AMP +
# SyncBN pre-training and resume, export, Mask R-CNN fine-tuning and evaluation;
# writes results/gpu_check.md and results/gpu_check.json
gpu-check: $(STAMP)
	$(PY) tools/gpu_check.py

clean:
	rm -rf output
