# Two entry points on a fresh machine: `make demo` (the offline demo) and `make test` (the test suite).
# Both create .venv and install what they need. TORCH_SPEC picks the torch build; CI pins the CPU wheel.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch>=2.4
BIN := $(VENV)/bin
STAMP := $(VENV)/.deltamerge-installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[offline,test]" "$(TORCH_SPEC)"
	# curvlinops -> backpack pulls a torchvision wheel built for another torch, which breaks `import transformers`
	# ("operator torchvision::nms does not exist"); backpack only uses it in its examples.
	$(BIN)/python -m pip uninstall -y -q torchvision 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/deltamerge demo

test: $(STAMP)
	$(BIN)/deltamerge assets fetch
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
