"""Ray Job entry point for `dcgen data` commands (synth-city, import: mass data generation on the cluster's CPUs).

Submitted by `dcgen data ... --cluster/--address` (dcgen.jobs_client) with the source tree as the job's working
directory; runs the forwarded command line in-process (dcgen.job_entry) and exits with its status.
"""

import sys

from dcgen.job_entry import run_command

if __name__ == "__main__":
    sys.exit(run_command("data", sys.argv[1:]))
