# The README's two commands: `make demo` and `make test`.
.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/archdisc discover --config examples/fmnist_mlp.toml --out runs/demo --force --threads 1

test: setup
	.venv/bin/python -m pytest tests

bench: setup
	.venv/bin/python experiments/bench_optim.py
	.venv/bin/python experiments/bench_extract.py
