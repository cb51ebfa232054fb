"""``python convert/alexnet_to_flax.py``: the weights converter as a script (the same as the
installed ``voc-jax-convert``), for every architecture (its name is the project's first).
The code lives in ``voc_jax.convert`` (the library ``converter``, the command ``command``),
inside the voc_jax namespace, so that installing voc-jax adds no top-level package named
``convert``.
"""

import sys

from voc_jax.convert.command import main

if __name__ == "__main__":
    sys.exit(main())
