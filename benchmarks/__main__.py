"""``python -m benchmarks``: issue 11's benchmark harness (benchmarks/harness.py)."""

from benchmarks.harness import main

main()
