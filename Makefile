# Two commands on a fresh machine (Python 3.11+ and make are all it needs):
#   make serve   start the service on http://127.0.0.1:8000 with the shipped rules
#   make test    run the test suite
# Both install the locked dependencies (uv.lock) into .venv first; uv itself is
# bootstrapped into .tools/ from PyPI at a pinned version.

UV_VERSION := 0.13.8
UV := .tools/bin/uv
export UV_PYTHON_DOWNLOADS := never

.PHONY: serve test validate bench

serve: $(UV)
	$(UV) run --frozen cds-rules serve

test: $(UV)
	$(UV) run --frozen pytest

validate: $(UV)
	$(UV) run --frozen cds-rules validate

bench: $(UV)
	$(UV) run --frozen cds-rules bench

$(UV):
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)
