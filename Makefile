# The two commands of the quick start: `make demo` (main job on the embedded dataset) and
# `make test`. Both create .venv on first use (tools/setup_env.sh; a second run does nothing).
PY := .venv/bin/python
STAMP := .venv/.ssprl_setup_done

.PHONY: setup demo test benchmark gpu-check gpu-wheels gpu-check-dry-run transfer study clean

setup: $(STAMP)

$(STAMP): tools/setup_env.sh requirements.txt setup.py
	bash tools/setup_env.sh

# the main job on the embedded dataset (generated on first use), CPU schedules: pre-train SS-PRL,
# export the trunk, fine-tune Mask R-CNN from it and from random init, evaluate both
demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m pytest -q tests

# the CPU transfer suite (semantic FPN, Faster R-CNN C4, Mask R-CNN FPN, each next to random
# init; about 20 minutes on 2 idle cores) on the trunk `make demo` exported; resumes when rerun
transfer: $(STAMP)
	$(PY) tools/run_transfer.py output/demo/ssprl_R_18_synthetic.pkl --cpu

# the method comparison on the embedded dataset (random init, SwAV, SS-PRL, MLS; 3 seeds; kNN,
# linear, semi-supervised, Mask R-CNN box/mask AP): hours on 2 cores, resumable, so rerun it to
# continue; writes results/study.md and results/study.json from the runs finished so far
study: $(STAMP)
	$(PY) tools/run_study.py --variants "random init" "SwAV (scale 0 only)" "SS-PRL (full)" MLS \
		--seeds 0 1 2 --out output/study_methods

benchmark: $(STAMP)
	$(PY) tools/benchmark.py

# one command that checks a GPU machine (about 8 minutes): CUDA tests, step throughput, AMP +
# SyncBN pre-training with full queues and resume, export, Mask R-CNN fine-tuning and evaluation;
# writes results/gpu_check.md, results/gpu_check.json and results/gpu_check_logs.tar.gz.
# On an air-gapped GPU node (no make, no venv): `bash tools/gpu_node.sh` (README, "GPU check")
gpu-check: $(STAMP)
	$(PY) tools/gpu_check.py

# the wheelhouse .whl/ that tools/gpu_node.sh installs on a node without network (about 10 MB)
gpu-wheels: $(STAMP)
	bash tools/gpu_wheels.sh

# the node's command rehearsed here: Python 3.12 with only the node's packages, no network
# (unshare -n, as root), CPU-sized parts; OUT=<folder> as $$OUT on the node
OUT ?= output/gpu_dry_run
gpu-check-dry-run: $(STAMP)
	OUT=$(OUT) bash tools/gpu_dry_run.sh

clean:
	rm -rf output
