from hfault.cli import main

main()
