"""Users POST real encoded images to the gateway and check every answer's shape.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --model eca_resnet50

Each user sends its next image as soon as the last is answered (closed loop, no think time),
so throughput at a given user count is what the stack sustains.
"""

from __future__ import annotations

import random

from locust import HttpUser, constant, events, task

from loadtests.checks import shape_problem
from loadtests.images import upload_pool


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:  # type: ignore[no-untyped-def]
    parser.add_argument("--model", default="eca_resnet50", help="served model to load")
    parser.add_argument("--top-k", type=int, default=5)


class ClassifyUser(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.model = options.model
        self.top_k = options.top_k
        self.pool = upload_pool()

    @task
    def classify(self) -> None:
        data, content_type = random.choice(self.pool)
        with self.client.post(
            f"/v1/models/{self.model}/classify",
            params={"top_k": self.top_k},
            data=data,
            headers={"Content-Type": content_type},
            name=f"classify {self.model}",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:120]}")
                return
            problem = shape_problem(response.json(), self.model, self.top_k)
            if problem:
                response.failure(problem)
            else:
                response.success()
