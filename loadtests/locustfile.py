"""Users POST real encoded images to the gateway and check every answer's shape.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --model eca_resnet50
    locust -f loadtests/locustfile.py --host ... --model eca_resnet50 -u 40 --user-rate 0.5

Two ways to load:

- closed loop (the default): each user sends its next image as soon as the last is answered,
  so a slow answer delays the next request (what the stack sustains at a concurrency, but it
  hides queueing: coordinated omission);
- open loop (``--user-rate R``): each user's requests arrive as a Poisson process of rate R, on
  a schedule that does not wait for answers, so ``-u U --user-rate R`` offers ``U * R``
  requests/s. An arrival its user cannot send on time (its previous request still in flight) is
  sent late; every arrival is reported as an ``ARRIVAL`` entry whose "response time" is that
  lateness, so the report can say when the generator could not hold the offered rate. Locust
  sums these across distributed workers like any other entry.
"""

from __future__ import annotations

import random
import time

from locust import HttpUser, events, task

from loadtests.checks import ARRIVAL, shape_problem
from perf.images import MIXED_UPLOADS, image_pool, media_type


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:  # type: ignore[no-untyped-def]
    parser.add_argument("--model", default="eca_resnet50", help="served model to load")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument(
        "--user-rate",
        type=float,
        default=0.0,
        help="open loop: each user's Poisson arrival rate (requests/s); 0: closed loop",
    )


class ClassifyUser(HttpUser):
    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.model = options.model
        self.top_k = options.top_k
        self.rate = options.user_rate
        self.pool = [
            (data, media_type(data))
            for data in image_pool(24, MIXED_UPLOADS, quality=75, png_every=3)
        ]
        self.arrival: float | None = None  # the next scheduled arrival (open loop)

    def wait_time(self) -> float:
        """Closed loop: none. Open loop: until the next arrival on the schedule, which moves on
        whether or not the last answer came back in time (Locust stops a waiting user at
        once, so the schedule starts here, not with a sleep in ``on_start``)."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.arrival = (now if self.arrival is None else self.arrival) + random.expovariate(
            self.rate
        )
        return max(0.0, self.arrival - now)

    @task
    def classify(self) -> None:
        if self.rate > 0:
            if self.arrival is None:
                return  # the first call only starts the schedule
            late_s = max(0.0, time.monotonic() - self.arrival)
            self.environment.events.request.fire(
                request_type=ARRIVAL,
                name=self.model,
                response_time=late_s * 1000,
                response_length=0,
                exception=None,
                context={},
            )
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
