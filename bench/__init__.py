"""medflow benchmarks: ``python -m bench.run`` runs every ``bench/bench_*.py`` module's ``main()``."""
