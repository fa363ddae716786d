"""Offline stand-in for the get-pip bootstrap script ansible-test downloads from its CI host.

ansible-test creates each sanity test's virtualenv without pip and then runs a cached
`get_pip_<version>.py` with pip's install arguments (e.g. `pip==24.2 --no-setuptools`). That
host is unreachable here, and ansible-test documents saving the script by hand. This stand-in has
the same contract: seed pip from the interpreter's bundled wheel (ensurepip), then install the
requested pip version and packages from the configured package index.
"""

import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"],
                      stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install", "--upgrade", *args])
