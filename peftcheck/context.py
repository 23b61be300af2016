"""What a check sees: the trained method, its base, its data, and the run's options."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from peftcheck.cache import BaseHandle, Pipeline, TrainedArtifact
from peftcheck.spec import LoadedSuite

__all__ = ["CheckContext"]


@dataclasses.dataclass
class CheckContext:
    """Handed to every check. Training happens on first access to the artifact."""

    pipeline: Pipeline
    suite: LoadedSuite
    method: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # what the check measured besides its value; Check.run returns them in the Measurement, so
    # no check writes into the method's record (issue 14)
    metrics: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # the method's record as the Session sees it: training's metrics plus its checks' so far
    view: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # what the check read besides its own artifact: a measurement that read any of them is not
    # reused from the check cache (peftcheck/check_cache.py)
    reads: set[str] = dataclasses.field(default_factory=set)

    @property
    def spec(self) -> Any:
        return self.suite.spec.methods[self.method]

    def artifact(self) -> TrainedArtifact:
        return self.pipeline.artifact(self.suite, self.method)

    def other(self, method: str) -> TrainedArtifact:
        """The artifact of another method of the same suite (for ratios between methods)."""
        self.reads.add("other")
        if method not in self.suite.spec.methods:
            from peftcheck.errors import SuiteError

            raise SuiteError(
                f"got {method!r}, the suite has methods {sorted(self.suite.spec.methods)}",
                file=self.suite.path,
            )
        return self.pipeline.artifact(self.suite, method)

    def base(self) -> BaseHandle:
        return self.pipeline.base(self.suite, self.spec.quantization)

    def method_record(self) -> dict[str, Any]:
        """The method's record with the metrics of the checks that ran before this one (issue 14)."""
        self.reads.add("method_record")
        record = self.artifact().record
        return self.view(record) if self.view is not None else record

    def base_perplexity(self) -> float | None:
        return self.pipeline.base_perplexity(self.suite, self.base())

    def option(self, name: str) -> Any:
        self.reads.add("option")
        return self.options.get(name)

    def env(self) -> dict[str, Any]:
        self.reads.add("env")
        from peftcheck.record import environment

        return environment()

    def probe(self) -> dict[str, Any]:
        """A fixed padded batch of held-out texts for comparing outputs of models."""
        from peftcheck.measure import probe_batch

        artifact = self.artifact()
        key = "probe"
        if key not in artifact.memo:
            artifact.memo[key] = probe_batch(
                artifact.base.tokenizer, artifact.data.eval_texts,
                max_length=self.suite.spec.data.max_length, device=artifact.device,
            )  # fmt: skip
        return artifact.memo[key]
