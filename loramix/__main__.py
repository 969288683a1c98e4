from loramix.cli import main

main()
