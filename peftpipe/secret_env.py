"""The environment variables that hold credentials: refused in ``execution.slurm.env``, removed from jobs.

One list, so that what the spec refuses and what a job's environment drops cannot disagree.
Credentials are for the processes that download and upload; job processes never see them.
"""

SECRET_ENV_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                    "AWS_SESSION_TOKEN")
