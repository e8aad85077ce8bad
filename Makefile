# The two commands of the README. Both create .venv when missing and install from constraints.txt
# (pinned versions verified on the 2-core CPU machines; see ../shared/STACK.md for why each pin).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.anodet-installed
PYTEST_ARGS ?=

.PHONY: demo test install bench clean-demo pretrain-data pretrain

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The night report's browser test drives Debian's Chromium (headless) with its chromedriver; installed once when
# missing (needs root and the package registry, as on CI and the developer machines).
BROWSER_STAMP := $(VENV)/.anodet-browser
$(BROWSER_STAMP): | $(STAMP)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
	touch $@

demo: $(STAMP)
	$(BIN)/anodet demo

test: $(STAMP) $(BROWSER_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/anodet bench

# The photographs of the generic pretraining corpus beyond scikit-image's and matplotlib's (Debian packages;
# needs root and the package registry). Only `make pretrain` needs them; the shipped weights were built with them.
pretrain-data:
	apt-get update -qq && apt-get install -y -qq mate-backgrounds ukui-wallpapers

# Rebuilds the shipped base model (anodet_core/weights/anodfdnet-base): ~10 min of corpus, ~45 min of training
# on 2 cores; resumable (checkpoint in anodet-corpus/).
pretrain: $(STAMP)
	# stage 1: 5000 steps on 160 px crops; stage 2 continues it for 2000 steps on 224 px crops at a lower lr
	# (the shipped tensors are this build's at g40aa8b3, with a ReLU head; their operating point was chosen again
	# with: anodet pretrain --corpus anodet-corpus --init anodet_core/weights/anodfdnet-base --recalibrate --export ...)
	$(BIN)/anodet pretrain --corpus anodet-corpus --store anodet-pretrain --steps 5000 --no-test --export anodet-pretrain/stage1
	$(BIN)/anodet pretrain --corpus anodet-corpus --store anodet-pretrain --init anodet-pretrain/stage1 --steps 2000 \
	  --crop 224 --lr 3e-4 --export anodet_core/weights/anodfdnet-base

clean-demo:
	rm -rf anodet-data .prefect
