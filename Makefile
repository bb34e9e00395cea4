# The two commands a new user needs: `make demo` (main job end to end) and `make test`.
.PHONY: setup demo test bench up down status clean

setup:
	bash infra/setup.sh

demo: setup
	.venv/bin/recsys demo

test: setup
	.venv/bin/ruff check --select F,E9 streaming batch models features serving infra bench tests
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python bench/ingest.py

up: setup
	.venv/bin/recsys up

down:
	.venv/bin/recsys down

status:
	.venv/bin/recsys status

clean: down
	rm -rf .recsys
