"""The contract (docs/contract.md), checked the same way on every backend."""
