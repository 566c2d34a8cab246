from kubefwd.cli import main

main()
