#!/bin/bash
# Guest script (runs inside the gpiosim VM, cwd /host = this checkout): the hardware tests
# against the real daemon. Arguments go to pytest. The share is read-only with a tmpfs
# overlay, hence -p no:cacheprovider; PYTHONPATH adds the checkout's src/.
export PYTHONPATH="/host/src${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m pytest -p no:cacheprovider -o addopts="" -W ignore::pytest.PytestConfigWarning \
  -q -rs -s "${@:-tests/hw}"
