# s2s: `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch goes in before the project, so pip never swaps it. We test with this
# release; pip picks the build for the platform (CUDA on Linux, MPS on macOS,
# or a CPU "+cpu" build where pip's find-links offers one, as on our CI).
# On a Linux machine without a GPU, PyTorch's CPU index saves gigabytes:
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
DEMO := runs/demo

.PHONY: install test demo bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# The tests run in one process per core (pytest-xdist), a test file per process at a time, so
# that a file's module fixtures are built once.
TEST_WORKERS ?= auto

test: install
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

# Tokenizer, a tiny model trained for at most 13 minutes (or 30 epochs, or
# until early stopping), a few translations, and test-set scores.
demo: install
	rm -rf $(DEMO)
	$(BIN)/s2s tokenizer train --corpus data/multi30k/train --src en --tgt de -o $(DEMO)/tokenizer
	$(BIN)/s2s train --run $(DEMO)/en-de --tokenizer $(DEMO)/tokenizer $(DEMO_TRAIN_FLAGS)
	printf 'A man in a blue shirt is riding a bike.\nTwo dogs are playing in the snow.\nA group of people are standing in front of a building.\n' \
		| $(BIN)/s2s translate -m $(DEMO)/en-de
	$(BIN)/s2s eval -m $(DEMO)/en-de --src data/multi30k/test_2016_flickr.en.gz \
		--ref data/multi30k/test_2016_flickr.de.gz

# The CPU recipe, chosen on the validation set (bench/recipe.py, bench/RESULTS.md): a large
# learning rate and small batches (more updates) suit a 2-core budget; a cosine decay to 0 at
# the --max-time deadline anneals fully however fast the host is; the average of the last 5
# snapshots is kept only when it validates better. 760 s of training leave room for the
# install in 15 minutes.
DEMO_TRAIN_FLAGS ?= --preset tiny --lr 5e-3 --warmup-steps 300 --max-tokens 2500 --max-time 760 --lr-schedule cosine --average-last 5

# The demo's recipe, timed stage by stage; appends to bench/RESULTS.md.
bench: install
	$(BIN)/python bench/quality.py --out runs/bench-demo --label "make demo recipe" -- $(DEMO_TRAIN_FLAGS)

lint: install
	$(BIN)/ruff check cli seq2seq tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
