# The two commands of the README. Each sets itself up first (scripts/setup.sh is quick once done).
.PHONY: setup quickstart test lint bench bench-rl bench-train

setup:
	@scripts/setup.sh

# The main job on the embedded default model: critique/revision data, AI-judged preference pairs, SFT, soft-label
# DPO, eval against the base and an HTML report, all under outputs/quickstart/ (about 15 minutes on 2 CPU cores).
quickstart: setup
	.venv/bin/cai run recipes/quickstart.yaml

# The test suite (real vLLM on the embedded model, a real vllm server, Chromium for the report).
test:
	@scripts/setup.sh --browser
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check .

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

# TRL is installed only for this comparison.
bench-train: setup
	.venv/bin/pip install --quiet --no-deps trl==1.16.0
	.venv/bin/python benchmarks/bench_train.py
