from xtok.cli import main

main()
