"""ppl.models: applications written with the language and the transforms.

The first is :mod:`ppl.models.quickstart`, the README's main job.
"""
