# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.regtorch-installed

# The lowest supported versions (ci/lowest.txt) in their own venv, and the tests touching them.
LOWEST_VENV ?= .venv-lowest
LOWEST_PY := $(LOWEST_VENV)/bin/python
# scikit-learn's checks and solvers, scipy/statsmodels statistics, pyarrow/pandas readers and
# streaming, tqdm, matplotlib, safetensors model files through the CLI, and the extras: ONNX
# export (onnx, onnxruntime, onnxscript) and the TensorBoard logger.
LOWEST_TESTS := tests/test_packaging.py tests/test_common.py tests/test_linear.py \
	tests/test_stats.py tests/test_engine_data.py tests/test_streaming.py \
	tests/test_training.py tests/test_plotting.py tests/test_cli.py::test_fit_predict_evaluate \
	tests/test_export.py tests/test_watch.py
LOWEST_NAMES := torch|numpy|scipy|scikit-learn|pandas|pyarrow|matplotlib|tqdm|safetensors|onnx|onnxruntime|onnxscript|tensorboard

.PHONY: demo test test-lowest lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,bench,export,tensorboard]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/regtorch demo --out demo-output

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src

test: lint
	$(PY) -m pytest -q -n 2

test-lowest:
	test -x $(LOWEST_PY) || $(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_PY) -m pip install -q --upgrade pip
	$(LOWEST_PY) -m pip install -q -c constraints.txt -c ci/lowest.txt torch==2.13.0
	$(LOWEST_PY) -m pip install -q -c constraints.txt -c ci/lowest.txt -e '.[dev,export,tensorboard]'
	@echo "lowest versions installed:"
	$(LOWEST_PY) -m pip freeze | grep -i -E '^($(LOWEST_NAMES))=='
	$(LOWEST_PY) -m pytest -q -p no:cacheprovider -n 2 $(LOWEST_TESTS)

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) $(LOWEST_VENV) demo-output bench-output
