"""`sim:MODEL`: the project's teacher simulator as a teacher, reached with the `openai` SDK.

Where it is: the spec's `@BASE_URL`, else `KPDD_SIM_URL` (a running `kpdd teacher-sim`), else a
simulator this client starts in-process on a loopback port, loading the problems of the kpdd
database so that `sim:gold` answers them from their gold solutions. The embedded simulator is
real HTTP all the same, and is stopped by `close()`. No key is needed (the simulator takes any
non-empty one; a placeholder is sent unless `api_key_env` names a variable).

The model name is passed through, so the simulator's forced faults work from a spec:
`sim:gold+fault=429*2` answers 429 to the first two attempts of each request.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar
from urllib.parse import urlsplit

from services.teachers.keys import read_key
from services.teachers.openai_client import OpenAIChatClient
from services.teachers.spec import TeacherSpec

log = logging.getLogger(__name__)

SIM_KEY_PLACEHOLDER = "kpdd-sim"


def openai_base_url(url: str) -> str:
    """The simulator's URL as the openai SDK wants it: with the `/v1` path."""
    url = url.rstrip("/")
    return url if urlsplit(url).path else f"{url}/v1"


class SimTeacherClient(OpenAIChatClient):
    provider: ClassVar[str] = "sim"
    max_tokens_field: ClassVar[str] = "max_tokens"

    def __init__(
        self, spec: TeacherSpec, *, sim_url: str | None = None, database_url: str | None = None, **kwargs: Any
    ) -> None:
        self._handle: Any = None
        url = spec.base_url or sim_url
        if url is None:
            from services.teachers.simulator import SimulatorConfig, run_in_thread

            self._handle = run_in_thread(SimulatorConfig(from_db=True, database_url=database_url))
            url = self._handle.url
            log.info("started the embedded teacher simulator at %s", url)
        self._sim_base_url = openai_base_url(url)
        try:
            super().__init__(spec, **kwargs)
        except BaseException:
            self._stop_embedded()
            raise

    @property
    def embedded(self) -> bool:
        return self._handle is not None

    def _base_url(self) -> str | None:
        return self._sim_base_url

    def _api_key(self) -> str:
        if self.spec.options.api_key_env:
            return read_key(self.spec.options.api_key_env, self.label)
        return SIM_KEY_PLACEHOLDER

    def close(self) -> None:
        super().close()
        self._stop_embedded()

    def _stop_embedded(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


__all__ = ["SIM_KEY_PLACEHOLDER", "SimTeacherClient", "openai_base_url"]
