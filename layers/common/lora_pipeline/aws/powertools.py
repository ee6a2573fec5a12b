"""The Powertools wiring every handler shares: structured logs with the Lambda context, X-Ray tracing,
CloudWatch metrics (flushed per call) and the event parsed into its pydantic model before the handler runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import event_parser
from pydantic import BaseModel

Handler = Callable[..., Any]


class Powertools:
    """One per function module: `powertools = Powertools()`, then `@powertools.handler(EventModel)`."""

    def __init__(self) -> None:
        self.logger = Logger()
        self.tracer = Tracer()
        self.metrics = Metrics()

    def handler(self, model: type[BaseModel]) -> Callable[[Handler], Handler]:
        def decorate(function: Handler) -> Handler:
            parsed = event_parser(model=model)(function)
            wrapped: Handler = self.logger.inject_lambda_context(
                self.tracer.capture_lambda_handler(self.metrics.log_metrics(parsed))
            )
            return wrapped

        return decorate

    def count(self, name: str) -> None:
        self.metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
