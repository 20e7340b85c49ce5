"""Request -> the service's state: what every route starts from."""

from __future__ import annotations

from fastapi import Request

from siamese_index.service.state import Live, ServiceState


def state_of(request: Request) -> ServiceState:
    """The ServiceState create_app put on the app."""
    state: ServiceState = request.app.state.siamese
    return state


def live(request: Request) -> Live:
    """The ready service's parts; NotReady (503 + Retry-After) while loading or after a failed start."""
    return state_of(request).live()


__all__ = ["live", "state_of"]
