from glasses.cli import main

main()
