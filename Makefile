# The two commands of the quick start: `make demo` (main job on the embedded dataset) and
# `make test`. Both create .venv on first use (tools/setup_env.sh; a second run does nothing).
PY := .venv/bin/python
STAMP := .venv/.ssprl_setup_done

.PHONY: setup demo test benchmark clean

setup: $(STAMP)

$(STAMP): tools/setup_env.sh requirements.txt setup.py
	bash tools/setup_env.sh

# SS-PRL pre-training on the embedded dataset (generated on first use), CPU schedule
demo: $(STAMP)
	$(PY) tools/train_net.py --config-file configs/quick_schedules/ssprl_R_18_cpu_synthetic.yaml

test: $(STAMP)
	$(PY) -m pytest -q tests

benchmark: $(STAMP)
	$(PY) tools/benchmark.py

clean:
	rm -rf output
