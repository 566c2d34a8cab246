from kubefwd.commands.cli import main

main()
