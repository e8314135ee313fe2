# Targets named in the README. `make test` and `make demo` work on a fresh machine: both bootstrap first.
.PHONY: bootstrap demo test check lint typecheck protos bench stack

bootstrap:
	scripts/bootstrap.sh

# The main job: a complete coding task (clone, shell agent, commit, push) on local Docker, no credentials.
demo: bootstrap
	uv run python -m scripts.demo_task

# The local stack in the foreground: prints its address and a client token; ^C stops it.
stack: bootstrap
	uv run python -m orchestrator.local_stack serve

check: lint typecheck protos

lint:
	uv run ruff check .
	uv run ruff format --check .

typecheck:
	uv run mypy

# Regenerates the protobuf code and fails if the committed code differs.
protos:
	uv run scripts/gen_protos.sh
	git diff --exit-code -- protos/

test: bootstrap check
	uv run pytest -q

bench: bootstrap
	uv run python -m bench.bench_core
