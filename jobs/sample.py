"""Ray Job entry point for `dcgen sample` (scenes from a trained VAE + DiT; the job reserves a GPU for it).

Submitted by `dcgen sample ... --cluster/--address` (dcgen.jobs_client) with the source tree as the job's working
directory; runs the forwarded command line in-process (dcgen.job_entry) and exits with its status.
"""

import sys

from dcgen.job_entry import run_command

if __name__ == "__main__":
    sys.exit(run_command("sample", sys.argv[1:]))
