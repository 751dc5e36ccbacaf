# Two entry points on a fresh machine: `make demo` (the offline demo) and `make test` (the test suite).
# Both create .venv and install what they need. TORCH_SPEC picks the torch build; CI pins the CPU wheel.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch>=2.4
BIN := $(VENV)/bin
STAMP := $(VENV)/.deltamerge-installed

MERGEKIT_VENV ?= .venv-mergekit
MERGEKIT_STAMP := $(MERGEKIT_VENV)/.deltamerge-installed

.PHONY: demo test install clean mergekit-env

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[offline,test]" "$(TORCH_SPEC)"
	# curvlinops -> backpack pulls a torchvision wheel built for another torch, which breaks `import transformers`
	# ("operator torchvision::nms does not exist"); backpack only uses it in its examples.
	$(BIN)/python -m pip uninstall -y -q torchvision 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)

# Test-only: mergekit's own code checks our exported checkpoints (tests/test_mergekit_interop.py). mergekit 0.1.4, the
# last release for transformers 4.x (0.1.5 needs transformers 5), pins pydantic~=2.10.6, safetensors~=0.5.2,
# click==8.2.1 (and accelerate~=1.6, which it does not need for merging), which conflict with .venv's set; so it gets a
# venv of its own that sees .venv's packages (torch, transformers, ...) through a .pth file and holds exactly these
# --no-deps pins in front of them.
$(MERGEKIT_STAMP): $(STAMP)
	$(BIN)/python -m venv --without-pip $(MERGEKIT_VENV)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
		"$$($(MERGEKIT_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_deltamerge_main.pth"
	$(BIN)/python -m pip --python $(MERGEKIT_VENV)/bin/python install -q --no-deps "mergekit==0.1.4" \
		"pydantic==2.10.6" "pydantic-core==2.27.2" "safetensors==0.5.3" "click==8.2.1" "immutables==0.21"
	touch $(MERGEKIT_STAMP)

mergekit-env: $(MERGEKIT_STAMP)

demo: $(STAMP)
	$(BIN)/deltamerge demo

test: $(STAMP) $(MERGEKIT_STAMP)
	$(BIN)/deltamerge assets fetch --required-only
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(MERGEKIT_VENV) runs
