"""The ServerApp: strategy, rounds, secure-aggregation stages, run directory and ledger."""
