"""What every handler shares around its use case: structured logs with the Lambda context and the run's
`dataset` and `run_id`, CloudWatch metrics (embedded metric format, flushed per call), and the event parsed
into its pydantic model before the handler runs.

No Powertools Tracer: it needs the X-Ray SDK, whose import cost about 185 ms of every cold start (with two boto
clients made at import). The functions keep Lambda's active tracing, which records each invocation and its
cold start without it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from aws_lambda_powertools.logging import Logger
from aws_lambda_powertools.metrics import Metrics, MetricUnit
from pydantic import BaseModel

Handler = Callable[..., Any]


class FunctionObservability:
    """One per function module: `observability = FunctionObservability()`, then
    `@observability.handler(EventModel)` on `lambda_handler`."""

    def __init__(self) -> None:
        self.logger = Logger()
        self.metrics = Metrics()

    def handler(self, model: type[BaseModel]) -> Callable[[Handler], Handler]:
        """Parse the event into `model`, log with the Lambda context (keys of the last call cleared), flush
        the metrics after the call."""

        def decorate(function: Handler) -> Handler:
            @wraps(function)
            def parsed(event: dict[str, Any], context: Any) -> Any:
                return function(model.model_validate(event), context)

            wrapped: Handler = self.logger.inject_lambda_context(
                self.metrics.log_metrics(parsed), clear_state=True
            )
            return wrapped

        return decorate

    def run_keys(self, dataset: str | None = None, run_id: str | None = None) -> None:
        """Put `dataset` and `run_id` on every later log line of this call (each as soon as it is known)."""
        keys = {name: value for name, value in (("dataset", dataset), ("run_id", run_id)) if value}
        self.logger.append_keys(**keys)

    def count(self, name: str, **dimensions: str) -> None:
        """One count of `name`; what varies (a status, an outcome) goes in `dimensions`, not in the name.
        Each handler counts one metric per call, so the dimensions are the call's (cleared by the flush)."""
        for key, value in dimensions.items():
            self.metrics.add_dimension(name=key, value=value)
        self.metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
