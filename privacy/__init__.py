"""The privacy library: accounting, ledgers, anonymization, secure aggregation, crypto.

It imports neither server/ nor client/ (nor Flower's app framework), so every piece can be
used and tested on its own.
"""
