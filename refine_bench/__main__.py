from refine_bench.cli import main

main()
