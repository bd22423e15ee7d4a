"""Ray Job entry point for every `dcgen train` command (the whole pipeline, vae, dit, features).

Submitted by `dcgen train ... --cluster/--address` (dcgen.jobs_client) with the source tree as the job's working
directory; runs the forwarded command line in-process (dcgen.job_entry) and exits with its status.
"""

import sys

from dcgen.job_entry import run_command

if __name__ == "__main__":
    sys.exit(run_command("train", sys.argv[1:]))
