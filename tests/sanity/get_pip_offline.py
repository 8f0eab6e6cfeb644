"""Stand-in for pip's get-pip.py, which ansible-test downloads from a host this machine cannot reach.

ansible-test runs it inside a fresh virtual environment with pip-install arguments; we bootstrap
pip from the interpreter's own ensurepip, then let that pip install the requested versions from
PyPI (which is reachable).  Installed by tests/sanity/run.sh into ansible-test's cache.
"""

import subprocess
import sys

arguments = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *arguments])
