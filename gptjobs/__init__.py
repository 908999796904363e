"""gptjobs: the Python client of a gptjobs server.

    import gptjobs

    client = gptjobs.Client("http://127.0.0.1:8000")          # key: $GPTJOBS_KEY
    run = client.runs.create({"dataset": "shakespeare_char", "device": "cpu", "max_iters": 200})
    for event in client.runs.stream(run.id):                  # to the final status, resumed if cut
        print(event["seq"], event["type"])
    print(client.runs.sample(run.id, "ROMEO:").text)
    client.runs.download_checkpoint(run.id, "best", "out")    # out/ckpt.pt, for nanoGPT's sample.py

Needs httpx and websockets only: no torch, no server code. The command line over it is
`gptjobs submit|list|show|watch|log|cancel|sample` (api/client.py), and `gptjobs sweep ...`
(api/cli_sweeps.py) over `client.sweeps`.
"""

from gptjobs.client import DEFAULT_SERVER, Client
from gptjobs.datasets import Datasets, UploadProgress
from gptjobs.errors import (
    APIError,
    Conflict,
    Forbidden,
    GptjobsError,
    NotFound,
    RateLimited,
    ServerError,
    Timeout,
    Unauthorized,
    Unreachable,
    ValidationError,
)
from gptjobs.runs import Runs
from gptjobs.sampling import SampleStream
from gptjobs.stream import EventStream
from gptjobs.sweeps import Sweeps
from gptjobs.types import (
    SWEEP_TERMINAL,
    TERMINAL,
    Checkpoint,
    Dataset,
    Diagnostics,
    Event,
    EventPage,
    Progress,
    Run,
    RunPage,
    RunWarning,
    SampleResult,
    Sweep,
    SweepBest,
    SweepRun,
)

__all__ = [
    "DEFAULT_SERVER",
    "SWEEP_TERMINAL",
    "TERMINAL",
    "APIError",
    "Checkpoint",
    "Client",
    "Conflict",
    "Dataset",
    "Datasets",
    "Diagnostics",
    "Event",
    "EventPage",
    "EventStream",
    "Forbidden",
    "GptjobsError",
    "NotFound",
    "Progress",
    "RateLimited",
    "Run",
    "RunPage",
    "RunWarning",
    "Runs",
    "SampleResult",
    "SampleStream",
    "ServerError",
    "Sweep",
    "SweepBest",
    "SweepRun",
    "Sweeps",
    "Timeout",
    "Unauthorized",
    "Unreachable",
    "UploadProgress",
    "ValidationError",
]
