"""Ray Job entry point for `dcgen encode` (a scene store through a trained VAE into a latent store).

Submitted by `dcgen encode ... --cluster/--address` (dcgen.jobs_client) with the source tree as the job's working
directory; runs the forwarded command line in-process (dcgen.job_entry) and exits with its status.
"""

import sys

from dcgen.job_entry import run_command

if __name__ == "__main__":
    sys.exit(run_command("encode", sys.argv[1:]))
