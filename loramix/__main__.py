from loramix.cli.app import main

main()
