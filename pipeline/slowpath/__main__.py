"""`python -m pipeline.slowpath`: run the slow-path daemon (started by `valepipe run`)."""
from pipeline.slowpath.daemon import main

main()
