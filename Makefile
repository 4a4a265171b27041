# llm2comp: the README's two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= ../shared/data
OUT    ?= demo_out
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# DeepSpeed's optional C++/CUDA ops are built on first use, never at install time.
export DS_BUILD_OPS := 0
# ... with the venv's ninja: a system ninja hashes build commands differently, and alternating between the
# two rebuilds DeepSpeed's JIT ops (~30 s on 2 cores) at every launch. (Only for the jobs: the install
# itself must find the system python3.)
WITH_VENV := PATH="$(abspath $(VENV))/bin:$$PATH"

.PHONY: install test test-all demo bench-prep reproduce-smollm2 clean

install: $(VENV)/.installed

# torch is pinned (constraints.txt) in the same pip command as everything else: left free, peft and
# deepspeed would pull a newer CUDA build of torch with gigabytes of CUDA packages.
$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt "torch==2.13.0" -e ".[dev]"
	touch $@

# Test files run on TEST_WORKERS processes (pytest-xdist), a file per worker so that its fixtures are built once.
# Most tests start 1-2 rank jobs at one thread each: about one worker per core keeps a 2-core machine busy.
TEST_WORKERS ?= 2
test: install
	$(WITH_VENV) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# FULL=1: also six MTEB tasks for the base model and the final encoder (about 12 minutes more on 2 cores).
demo: install
	$(VENV)/bin/llm2comp models pull smollm2-135m
	$(WITH_VENV) bash launch/demo.sh "$(DATA)" "$(OUT)" $(if $(FULL),--full)

# The small-scale reproductions of docs/RESULTS.md, resumable (they skip what docs/results/PROFILE records):
# PROFILE=cpu2 (issue 27's comparison, ~25 h on 2 cores), cpu (the first, issue 14's: ~11 h) or full (GPU).
PROFILE ?= cpu2
reproduce-smollm2: install
	$(WITH_VENV) $(PY) launch/reproduce_smollm2.py --profile $(PROFILE) --data "$(DATA)"

bench-prep: install
	$(PY) bench/prep_throughput.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
