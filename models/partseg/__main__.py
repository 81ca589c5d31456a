"""``python -m ppl.models.partseg``: see :mod:`ppl.models.partseg.benchmark`."""

from ppl.models.partseg.benchmark import main

if __name__ == "__main__":
    main()
