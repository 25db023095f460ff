"""The vocabulary every other layer speaks: policy, consent cookie, fields, settings, ledger.

Nothing here does I/O or imports from a higher layer (collect, store, rights, web).
"""
