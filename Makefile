# The two commands of the README. Each sets itself up first (scripts/setup.sh is quick once done).
.PHONY: setup quickstart test lint bench

setup:
	@scripts/setup.sh

# The main job: SL-CAI critique -> revision data from the bundled red-team prompts and constitution on the
# embedded default model, ending in datasets under outputs/quickstart/export/.
quickstart: setup
	.venv/bin/cai generate --config recipes/quickstart-generate.yaml

# The test suite (real vLLM on the embedded model; about 10 minutes on 2 CPU cores).
test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check .

bench: setup
	.venv/bin/python benchmarks/bench_generate.py
