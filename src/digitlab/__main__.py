import gc
import sys

from digitlab.cli import main

if __name__ == "__main__":  # not when a `sweep --jobs` worker process (spawned) imports this module again
    status = main()
    # The interpreter's last garbage collection, at exit, walks every object torch's import made: ~0.3 s of CPU
    # after the work is done (a tenth of `fast`'s time outside its training loop). Objects frozen here are skipped
    # by it; the exit handlers still run and every file is already written and closed.
    gc.freeze()
    sys.exit(status)
