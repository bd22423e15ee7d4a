"""Ray Job entry point for `dcgen export` (a scene store's clips as per-frame files: occ3d-npz or npy).

Submitted by `dcgen export ... --cluster/--address` (dcgen.jobs_client) with the source tree as the job's working
directory; runs the forwarded command line in-process (dcgen.job_entry) and exits with its status.
"""

import sys

from dcgen.job_entry import run_command

if __name__ == "__main__":
    sys.exit(run_command("export", sys.argv[1:]))
