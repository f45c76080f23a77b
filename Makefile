# Thin task list over uv; every target is one uv command.
.PHONY: sync test test-all lint typecheck bench bench-compare ci

sync:
	uv sync --all-packages --all-groups

test:
	uv run pytest

test-all:
	uv run pytest -m ""

lint:
	uv run ruff check .

typecheck:
	uv run mypy

bench:
	uv run python bench/run.py --size quick

bench-compare:
	uv run python bench/run.py --size quick --compare all

ci:
	bash .ci/run
