from personaloom.cli import main

main()
