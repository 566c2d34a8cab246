from kubefwd.support.startuptrace import mark

mark("interpreter started")
from kubefwd.commands.cli import main  # noqa: E402

mark("command line imported")

main()
