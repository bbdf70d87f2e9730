"""``python -m manifests.run ...`` is the same CLI as ``python -m manifests ...`` (the other stages use ``.run``)."""
import sys

from manifests.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
