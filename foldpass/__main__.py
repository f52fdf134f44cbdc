"""`python -m foldpass`: the command line.

`python -m` puts the working directory first on sys.path; it is moved to the end before anything
else is imported, so a file there (say onnx_graphsurgeon.py) cannot shadow foldpass's own imports.
"""

import os
import sys

if sys.path and sys.path[0] in ("", os.getcwd()):
    sys.path.append(sys.path.pop(0))

from foldpass.cli import main

sys.exit(main())
