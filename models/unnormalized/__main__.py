"""``python -m ppl.models.unnormalized``: see :mod:`ppl.models.unnormalized.benchmark`."""

from ppl.models.unnormalized.benchmark import main

if __name__ == "__main__":
    main()
