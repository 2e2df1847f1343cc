# The two commands of the README. Each sets itself up first (scripts/setup.sh is quick once done).
.PHONY: setup quickstart test lint mutate bench bench-rl bench-train

setup:
	@scripts/setup.sh

# The main job on the embedded default model: critique/revision data, AI-judged preference pairs, SFT, soft-label
# DPO, eval against the base and an HTML report, all under outputs/quickstart/ (9-13 minutes on 2 CPU cores; the embedded judge's check ships with cai).
quickstart: setup
	.venv/bin/cai run recipes/quickstart.yaml

# The test suite (real vLLM on the embedded model, a real vllm server, Chromium for the report), on two workers
# (pytest-xdist): a test file, or the server folder, stays on one worker with its fixtures (tests/conftest.py).
TEST_WORKERS ?= 2
test:
	@scripts/setup.sh --browser
	CAI_REQUIRE_CHROMIUM=1 .venv/bin/python -m pytest -q $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --no-loadscope-reorder)

lint: setup
	.venv/bin/ruff check .

# Mutation testing of the pure maths and statistics with the pure tests (modules in pyproject.toml, [tool.mutmut]);
# about an hour on 2 cores. Not part of `make test`. Survivors: `.venv/bin/mutmut results`; tests/README.md says
# what is left and why.
mutate: setup
	rm -rf mutants
	.venv/bin/mutmut run --max-children 2
	.venv/bin/mutmut results

bench: setup
	.venv/bin/python benchmarks/bench_generate.py
	.venv/bin/python benchmarks/bench_judge.py
	.venv/bin/python benchmarks/bench_openai.py
	.venv/bin/python benchmarks/bench_rollouts.py

# The RL comparisons train models (about 10 minutes each on 2 cores); bench-safe-rlhf needs recipes/safe-rlhf.yaml's run.
bench-rl: setup
	.venv/bin/python benchmarks/bench_online.py
	.venv/bin/cai run recipes/safe-rlhf.yaml
	.venv/bin/python benchmarks/bench_safe_rlhf.py

# TRL (installed with the dev tools, without its pinned dependencies) is the baseline here.
bench-train: setup
	.venv/bin/python benchmarks/bench_train.py
