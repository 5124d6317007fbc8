"""Services: configuration, corpora, teachers, validation, export and the `kpdd` CLI.

Nothing in this package imports torch, transformers or deepspeed.
"""
