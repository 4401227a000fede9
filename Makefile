# Two commands for a newcomer on a fresh machine:
#   make demo   set up .venv with the pinned stack, fetch the sample slide, run the main job
#   make test   the same set-up, the system packages napari needs, then the default test suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
XT := $(VENV)/bin/xt-slide
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=
# What Qt's xcb platform and Xvfb need to draw napari's canvas with no screen.
APT_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxcb-image0 \
	libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1 libxcb-sync1 \
	libxcb-shm0 libxcb-glx0 libx11-xcb1 libxkbcommon-x11-0 libgl1 libegl1 libgl1-mesa-dri \
	libglx-mesa0 libfontconfig1 libdbus-1-3

.PHONY: setup system-deps sample demo test test-slow bench default-model clean

setup: $(STAMP)

$(STAMP): requirements/pinned.txt setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/pinned.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi

sample: setup
	@$(PY) -m xt_core.sample_data >/dev/null

demo: setup sample
	@slide=$$($(PY) -m xt_core.sample_data); \
	$(XT) info "$$slide" && \
	$(XT) tissue "$$slide" --out $(DEMO_OUT)/CMU-1-Small-Region.tissue.png && \
	$(XT) segment "$$slide" --out $(DEMO_OUT) && \
	echo "demo outputs in $(DEMO_OUT)/:" && ls -1 $(DEMO_OUT)

test: setup system-deps sample
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: setup system-deps sample
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: setup sample
	$(PY) bench/run_read_bench.py
	$(PY) bench/run_model_bench.py
	$(PY) bench/run_memory_bench.py
	$(PY) bench/run_scale_bench.py
	$(PY) bench/run_dask_bench.py
	$(PY) bench/run_context_bench.py

default-model: setup
	$(PY) recipes/default_model/make_default_model.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
